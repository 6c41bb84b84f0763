//! WeChat platform (api.weixin.qq.com): access token, login, trading component client.
