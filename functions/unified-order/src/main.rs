//! The `unified-order` Lambda function. Everything happens in `wxshop::lambda::run`; see
//! docs/DEPLOY.md and infra/template.yaml.

use wxshop::handlers::entry;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    wxshop::lambda::run::<entry::UnifiedOrder>().await
}
