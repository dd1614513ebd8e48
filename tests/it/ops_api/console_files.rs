//! `/console`: served without a token, under its own content security policy, with no inline
//! script or handler for that policy to block.

use reqwest::StatusCode;
use tests::TestApp;

#[tokio::test]
async fn the_console_is_served_under_its_own_policy_without_a_token() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let fetch = async |path: &str| {
        let response = client
            .get(format!("{}{path}", app.http_base))
            .send()
            .await
            .unwrap();
        let headers = response.headers().clone();
        (response.status(), headers, response.text().await.unwrap())
    };
    let (_, _, index) = fetch("/console").await;
    let mut files = vec![("/console".to_owned(), "text/html")];
    let named = |body: &str, files: &mut Vec<(String, &str)>| {
        let attributes = body
            .split("src=\"")
            .skip(1)
            .chain(body.split("href=\"").skip(1));
        let imports = body
            .split("from './")
            .skip(1)
            .map(|rest| rest.trim_start_matches("/console/"));
        let mut found: Vec<String> = attributes
            .filter_map(|rest| {
                rest.split('"')
                    .next()?
                    .strip_prefix("/console/")
                    .map(str::to_owned)
            })
            .collect();
        found.extend(imports.filter_map(|rest| Some(rest.split('\'').next()?.to_owned())));
        for file in found {
            let path = format!("/console/{file}");
            let kind = if file.ends_with(".css") {
                "text/css"
            } else {
                "text/javascript"
            };
            if !files.iter().any(|(p, _)| *p == path) {
                files.push((path, kind));
            }
        }
    };
    named(&index, &mut files);
    let mut i = 1;
    while i < files.len() {
        let (path, kind) = files[i].clone();
        let (status, headers, body) = fetch(&path).await;
        i += 1;
        assert_eq!(status, 200, "{path}");
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert!(header("content-type").unwrap().starts_with(kind), "{path}");
        named(&body, &mut files);
    }
    // The script, the style and the modules the script imports.
    assert!(files.len() >= 6, "index.html and what it loads: {files:?}");
    for (path, kind) in &files {
        let (status, headers, body) = fetch(path).await;
        assert_eq!(status, 200, "{path}");
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert!(header("content-type").unwrap().starts_with(kind), "{path}");
        let csp = header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
        assert!(!body.contains("innerHTML"), "{path}");
    }
    let lower = index.to_ascii_lowercase();
    for (i, _) in lower.match_indices("<script") {
        let tag = &lower[i..i + lower[i..].find('>').unwrap()];
        assert!(tag.contains(" src="), "inline script: {tag}");
    }
    let handler = lower.match_indices(" on").any(|(i, _)| {
        let rest = &lower[i + 3..];
        let name = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        name > 0 && rest[name..].trim_start().starts_with('=')
    });
    assert!(!handler, "an on...= attribute in index.html");
    assert!(
        !lower.contains(" style="),
        "a style attribute in index.html"
    );

    for path in [
        "/console/nope.js",
        "/console/..%2F..%2FCargo.toml",
        "/console/.%2Fapp.js",
    ] {
        let (status, headers, _) = fetch(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(headers.contains_key("content-security-policy"), "{path}");
    }
    // The API keeps its own, stricter policy.
    let (_, headers, _) = fetch("/openapi.json").await;
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}
