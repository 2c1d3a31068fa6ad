//! The simulator over HTTPS: a certificate a client can be told to trust,
//! HTTP/2 or HTTP/1.1 by ALPN, the same answers as over plain HTTP, and
//! counts of connections and handshakes.

use helix_sim::tls::Alpn;
use helix_sim::world::WorldConfig;
use helix_sim::{Config, Fault, FaultKind, Simulator};
use reqwest::blocking::Client;
use reqwest::Version;
use serde_json::Value;
use std::time::Duration;

fn start(alpn: Alpn) -> Simulator {
    Simulator::start(Config {
        world: WorldConfig {
            channels: 300,
            live_fraction: 0.5,
            ..Default::default()
        },
        tls: Some(alpn),
        ..Default::default()
    })
    .unwrap()
}

fn trusting(sim: &Simulator) -> Client {
    let pem = std::fs::read(sim.ca_file().expect("a CA file")).unwrap();
    let mut b = Client::builder().timeout(Duration::from_secs(5));
    for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
        b = b.add_root_certificate(cert);
    }
    b.build().unwrap()
}

fn token(sim: &Simulator, http: &Client) -> String {
    let r = http
        .post(format!("{}/token", sim.auth_url()))
        .form(&[
            ("client_id", sim.client_id()),
            ("client_secret", sim.client_secret()),
            ("grant_type", "client_credentials".into()),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

fn streams(sim: &Simulator, http: &Client, token: &str) -> reqwest::Result<Response> {
    let ids: Vec<(String, String)> = sim.world(|w| {
        w.channels
            .iter()
            .take(100)
            .map(|c| ("user_id".to_string(), c.id.clone()))
            .collect()
    });
    let r = http
        .get(format!("{}/streams", sim.helix_url()))
        .query(&ids)
        .query(&[("first", "100")])
        .header("Client-Id", sim.client_id())
        .header("Authorization", format!("Bearer {token}"))
        .send()?;
    let (status, version) = (r.status().as_u16(), r.version());
    let remaining = r
        .headers()
        .get("ratelimit-remaining")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.bytes()?;
    Ok(Response {
        status,
        version,
        remaining,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

struct Response {
    status: u16,
    version: Version,
    remaining: Option<String>,
    body: Value,
}

#[test]
fn https_with_http2_multiplexes_one_connection() {
    let sim = start(Alpn::H2AndHttp1);
    assert!(sim.helix_url().starts_with("https://127.0.0.1:"));
    let pem = std::fs::read_to_string(sim.ca_file().unwrap()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let http = trusting(&sim);
    let token = token(&sim, &http);
    // Twenty requests at once, all on the connection the token request opened.
    sim.set_latency(Duration::from_millis(30));
    let answers: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| s.spawn(|| streams(&sim, &http, &token).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.version, Version::HTTP_2);
        assert!(a.remaining.is_some(), "Ratelimit-Remaining on every answer");
        assert_eq!(a.body["data"].as_array().unwrap().len(), 50);
    }
    let c = sim.counters();
    assert_eq!(c.connections, 1, "{c:?}");
    assert_eq!(c.tls_handshakes, 1, "{c:?}");
    assert_eq!(c.http2_connections, 1, "{c:?}");
    assert_eq!(c.streams_requests, 20);
    assert!(c.max_in_flight > 1, "requests overlapped: {c:?}");
}

#[test]
fn http1_only_server_is_spoken_to_in_http1() {
    let sim = start(Alpn::Http1Only);
    let http = trusting(&sim);
    let token = token(&sim, &http);
    let a = streams(&sim, &http, &token).unwrap();
    assert_eq!((a.status, a.version), (200, Version::HTTP_11));
    let c = sim.counters();
    assert_eq!(c.http2_connections, 0);
    assert_eq!(
        c.tls_handshakes, 1,
        "keep-alive reuses the connection: {c:?}"
    );
}

#[test]
fn an_untrusted_certificate_is_refused_and_counted() {
    let sim = start(Alpn::H2AndHttp1);
    let http = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = http
        .post(format!("{}/token", sim.auth_url()))
        .send()
        .unwrap_err();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(text.contains("certificate"), "{text}");
    // The client hangs up during the handshake; the server sees it fail.
    for _ in 0..50 {
        if sim.counters().tls_failures > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = sim.counters();
    assert_eq!((c.tls_handshakes, c.tls_failures), (0, 1), "{c:?}");
    assert_eq!(c.token_requests, 0);
}

#[test]
fn errors_and_faults_look_the_same_over_http2() {
    let sim = start(Alpn::H2AndHttp1);
    let http = trusting(&sim);
    let token = token(&sim, &http);
    // 401 with Twitch's body.
    let a = streams(&sim, &http, "not-a-token").unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(a.body["message"], "Invalid OAuth token");
    assert_eq!(a.body["error"], "Unauthorized");
    // 429 keeps its rate-limit headers.
    sim.add_fault(Fault::new(FaultKind::Status { status: 429 }).times(1));
    let a = streams(&sim, &http, &token).unwrap();
    assert_eq!(a.status, 429);
    assert!(a.remaining.is_some());
    // A body cut short is an error on the client's side, and the connection survives it.
    sim.add_fault(Fault::new(FaultKind::DropMidBody).times(1));
    assert!(streams(&sim, &http, &token).is_err());
    // A trickled body arrives whole.
    sim.add_fault(
        Fault::new(FaultKind::Trickle {
            chunk: 1000,
            pause_ms: 5,
        })
        .times(1),
    );
    let a = streams(&sim, &http, &token).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body["data"].as_array().unwrap().len(), 50);
    let a = streams(&sim, &http, &token).unwrap();
    assert_eq!((a.status, a.version), (200, Version::HTTP_2));
    assert_eq!(sim.counters().tls_handshakes, 1);
}
