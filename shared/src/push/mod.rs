//! Message push from the WeChat platform: URL verification, safe mode, typed events.
