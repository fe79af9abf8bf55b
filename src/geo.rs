//! Geo codes: ISO 3166-1 alpha-2 countries and ISO 3166-2 subdivisions, from the
//! `rust_iso3166` dataset (the complete standard lists, not a hand-typed handful).

/// Whether `cc` (any case) is an ISO 3166-1 alpha-2 country code.
pub fn is_country(cc: &str) -> bool {
    cc.len() == 2
        && cc.bytes().all(|b| b.is_ascii_alphabetic())
        && rust_iso3166::from_alpha2(&cc.to_ascii_uppercase()).is_some()
}

/// Whether `state` (any case, without the country prefix) is an ISO 3166-2 subdivision of
/// country `cc`: `is_state("us", "ca")` for US-CA, `is_state("de", "by")` for DE-BY.
pub fn is_state(cc: &str, state: &str) -> bool {
    if !is_country(cc) || state.is_empty() || state.len() > 3 {
        return false;
    }
    if !state.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let code = format!("{}-{}", cc.to_ascii_uppercase(), state.to_ascii_uppercase());
    rust_iso3166::iso3166_2::from_code(&code).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries() {
        for ok in ["us", "US", "De", "jp", "gb", "br"] {
            assert!(is_country(ok), "{ok}");
        }
        for bad in ["zz", "usa", "u", "", "u1", "xx", "ü"] {
            assert!(!is_country(bad), "{bad}");
        }
    }

    #[test]
    fn states() {
        for (c, s) in [
            ("us", "ca"),
            ("US", "NY"),
            ("de", "by"),
            ("de", "BE"),
            ("gb", "edh"),
            ("fr", "idf"),
        ] {
            assert!(is_state(c, s), "{c}-{s}");
        }
        for (c, s) in [
            ("us", "zz"),
            ("de", "ca"),
            ("zz", "ca"),
            ("us", ""),
            ("us", "c-a"),
            ("us", "cali"),
        ] {
            assert!(!is_state(c, s), "{c}-{s}");
        }
    }
}
