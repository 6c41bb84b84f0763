//! Mini-program login sessions.
