#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The catalog bounds a product's images: at most 9 `head_img` and 9 `qualification_pics`,
//! each at most 2048 bytes with the trading component on (WeChat-hosted URLs) or 60,000 with
//! it off (inline `data:` images taken) — bounds of ours, UNVERIFIED against WeChat: see
//! `catalog_sync::MAX_HEAD_IMGS`. Upload used to take any count of any length, making a
//! product record DynamoDB may not store (400 KB an item) and that WeChat would refuse anyway.

use serde_json::{json, Value};

#[path = "reliability_support.rs"]
mod support;
use support::{stack_with, Client};

/// A kettle upsert with `head_img` and `qualification_pics` as given.
fn kettle(head_img: Vec<String>, qualification_pics: Vec<String>) -> Value {
    json!({"action": "upsert", "product": {
        "product_id": "kettle", "title": "Kettle, 1 l",
        "head_img": head_img, "third_cat_id": 6153,
        "brand_id": 2100000000,
        "qualification_pics": qualification_pics,
        "skus": [{"sku_id": "kettle-1l", "price": 8800, "stock": 5}]
    }})
}

fn urls(n: usize, len: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let head = format!("https://mmecimage.cn/p/wxlocal/{i}-");
            let pad = len.saturating_sub(head.len() + 4);
            format!("{head}{}.jpg", "x".repeat(pad))
        })
        .collect()
}

/// Whether the catalog holds the kettle.
async fn kettle_stored(c: &Client) -> bool {
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "kettle"}),
        )
        .await;
    s == 200 && v["product"]["product_id"] == "kettle"
}

async fn refused(c: &Client, body: &Value, code: &str, names: &[&str]) {
    let (s, v) = c.admin("/admin/catalogSync", body).await;
    assert_eq!((s, v["code"].as_str()), (400, Some(code)), "{v}");
    let msg = v["message"].as_str().unwrap();
    for n in names {
        assert!(msg.contains(n), "the refusal names {n}: {msg}");
    }
    assert!(!kettle_stored(c).await, "nothing stored");
}

/// GIVEN a shop with the trading component on (images: WeChat-hosted URLs of at most 2048
/// bytes), and one with it off (inline `data:` images of at most 60,000 bytes taken too)
/// WHEN the merchant uploads a product with 10 main images, 10 qualification images, a main
/// image one byte over the shop's bound, an inline `data:` qualification image over it
/// THEN each is refused 400 naming the field and its bound, and nothing is stored; the
/// largest product allowed (9 of each, the biggest images the shop takes) is stored and
/// listed with every image.
#[tokio::test]
async fn images_beyond_the_catalogs_bounds_are_refused_at_upload() {
    for (vars, cap) in [
        (&[][..], 2048),
        (&[("WX_TRADING_COMPONENT", "off")][..], 60_000),
    ] {
        let r = stack_with(vars).await;
        let c = Client::new(&r);
        refused(
            &c,
            &kettle(urls(10, 60), vec![]),
            "BAD_HEAD_IMG",
            &["head_img", "at most 9"],
        )
        .await;
        refused(
            &c,
            &kettle(urls(1, 60), urls(10, 60)),
            "BAD_QUALIFICATION_PICS",
            &["qualification_pics", "at most 9"],
        )
        .await;
        let over = (cap + 1).to_string();
        refused(
            &c,
            &kettle(urls(1, cap + 1), vec![]),
            "BAD_HEAD_IMG",
            &["head_img[0]", &over, &cap.to_string()],
        )
        .await;
        let inline = format!("data:image/png;base64,{}", "A".repeat(cap));
        refused(
            &c,
            &kettle(urls(1, 60), vec![inline]),
            "BAD_QUALIFICATION_PICS",
            &["qualification_pics[0]", &cap.to_string()],
        )
        .await;

        // The largest product a request (64 KiB at most) can carry within the bounds.
        let (head, pics) = if cap == 2048 {
            (urls(9, cap), urls(9, cap))
        } else {
            let mut head = vec![format!(
                "data:image/png;base64,{}",
                "A".repeat(cap - "data:image/png;base64,".len())
            )];
            head.extend(urls(8, 256));
            (head, urls(9, 256))
        };
        let (s, v) = c
            .admin("/admin/catalogSync", &kettle(head.clone(), pics.clone()))
            .await;
        assert_eq!(s, 200, "the largest product allowed is taken: {v}");
        let p = support::get_product(&c, "kettle").await;
        assert_eq!(p["head_img"], json!(head), "{p}");
        let (s, v) = c
            .admin("/admin/catalogSync", &json!({"action": "products"}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(
            v["products"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["product_id"] == "kettle" && p["head_img"] == json!(head)),
            "listed"
        );
        r.stop();
    }
}
