//! Every file of the committed fuzz corpora (`fuzz/corpus/<target>/`), run through the same
//! entry points the cargo-fuzz targets use: CI checks the parsers' invariants on stable
//! Rust, without libFuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use tollgate::fuzzing;

fn run(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            check(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn proxy_header() {
    run("proxy_header", fuzzing::proxy_header);
}

#[test]
fn sniff() {
    run("sniff", fuzzing::sniff);
}

#[test]
fn http_request_head() {
    run("http_request_head", fuzzing::http_request_head);
}

#[test]
fn http_response() {
    run("http_response", fuzzing::http_response);
}

#[test]
fn chunked() {
    run("chunked", fuzzing::chunked);
}

#[test]
fn socks5() {
    run("socks5", fuzzing::socks5);
}

#[test]
fn username() {
    run("username", fuzzing::username);
}

#[test]
fn config() {
    run("config", fuzzing::config);
}

#[test]
fn forward() {
    run("forward", fuzzing::forward::run);
}
