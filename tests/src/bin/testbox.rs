//! `testbox`: the smallest useful workload for tests, shipped in a `FROM scratch` image.
//!
//! Behaviour is chosen by environment variables so one image serves every test:
//! - `TESTBOX_EXIT_AFTER_MS` + `TESTBOX_EXIT_CODE`: exit with that code after that delay
//!   (a crashing workload);
//! - `TESTBOX_LISTEN=PORT`: answer every TCP connection with an HTTP 200 naming the
//!   container (a serving workload);
//! - otherwise it idles until SIGTERM/SIGINT, then exits 0 (so `stop` is fast).

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let exit_code: i32 = env_parse("TESTBOX_EXIT_CODE").unwrap_or(0);
    println!("testbox started");
    for (key, value) in std::env::vars().filter(|(k, _)| k.starts_with("TESTBOX_")) {
        println!("env {key}={value}");
    }

    if let Some(port) = env_parse::<u16>("TESTBOX_LISTEN") {
        tokio::spawn(serve(port));
    }

    let exit_after = async {
        match env_parse::<u64>("TESTBOX_EXIT_AFTER_MS") {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = exit_after => {
            println!("testbox exiting with code {exit_code}");
            std::process::exit(exit_code);
        }
        _ = term.recv() => println!("testbox got SIGTERM"),
        _ = tokio::signal::ctrl_c() => println!("testbox got SIGINT"),
    }
}

async fn serve(port: u16) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .expect("bind TESTBOX_LISTEN port");
    println!("testbox listening on {port}");
    let body = std::env::var("TESTBOX_BODY").unwrap_or_else(|_| "testbox".into());
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            body.len(),
            body
        );
        tokio::spawn(async move {
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

fn env_parse<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}
