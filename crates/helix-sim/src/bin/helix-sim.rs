//! `helix-sim`: the Helix simulator as a standalone server for demos and benchmarks.
//!
//! Prints `listening on http://127.0.0.1:PORT` (or `https://...` with `--tls`)
//! once ready and serves until killed. With `--tls` it also prints
//! `ca file PATH`: the CA certificate (PEM) a client must trust.

use helix_sim::{Config, Simulator};
use std::time::Duration;

const USAGE: &str = "usage: helix-sim [--port N] [--channels N] [--live-fraction F] [--first-id N]
                 [--latency-ms N] [--bucket N] [--bucket-period-secs F]
                 [--client-id S] [--client-secret S] [--tick-secs F] [--churn F]
                 [--flicker F] [--seed N]
                 [--tls h2|http1] [--ca-file PATH] [--h2-max-streams N]";

fn main() {
    let mut cfg = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return;
        }
        let Some(value) = args.next() else {
            eprintln!("{flag} needs a value\n{USAGE}");
            std::process::exit(2);
        };
        let bad = |what: &str| -> ! {
            eprintln!("{flag}: {what}, got {value:?}\n{USAGE}");
            std::process::exit(2)
        };
        let num = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| bad("expected a whole number"))
        };
        let frac = || {
            value
                .parse::<f64>()
                .unwrap_or_else(|_| bad("expected a number"))
        };
        match flag.as_str() {
            "--port" => cfg.port = num() as u16,
            "--channels" => cfg.world.channels = num() as usize,
            "--first-id" => cfg.world.first_id = num(),
            "--live-fraction" => cfg.world.live_fraction = frac(),
            "--latency-ms" => cfg.latency = Duration::from_millis(num()),
            "--bucket" => cfg.bucket_limit = num() as u32,
            "--bucket-period-secs" => cfg.bucket_period = Duration::from_secs_f64(frac()),
            "--client-id" => cfg.client_id = value.clone(),
            "--client-secret" => cfg.client_secret = value.clone(),
            "--tick-secs" => cfg.tick_every = Some(Duration::from_secs_f64(frac())),
            "--churn" => cfg.world.churn = frac(),
            "--flicker" => cfg.world.flicker = frac(),
            "--seed" => cfg.world.seed = num(),
            "--tls" => {
                cfg.tls = Some(match value.as_str() {
                    "h2" => helix_sim::tls::Alpn::H2AndHttp1,
                    "http1" => helix_sim::tls::Alpn::Http1Only,
                    _ => bad("expected h2 or http1"),
                })
            }
            "--ca-file" => cfg.ca_file = Some(value.clone().into()),
            "--h2-max-streams" => cfg.h2_max_concurrent_streams = num() as u32,
            _ => bad("unknown flag"),
        }
    }
    let sim = match Simulator::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("helix-sim: cannot listen: {e}");
            std::process::exit(1);
        }
    };
    let url = sim.helix_url();
    println!(
        "listening on {}",
        url.strip_suffix("/helix").unwrap_or(&url)
    );
    if let Some(ca) = sim.ca_file() {
        println!("ca file {}", ca.display());
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
