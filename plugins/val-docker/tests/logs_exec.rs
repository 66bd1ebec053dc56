//! Log lines (tail, since, follow) and diagnostic commands (bounded in time and output)
//! through the Docker plugin, against the real Docker Engine.

mod common;

use std::time::Duration;

use common::Fixture;
use futures::StreamExt;
use motey_val::{ExecRequest, ImageState, LogQuery, LogStream, VirtualizationEngine};

#[tokio::test]
async fn log_lines_carry_times_and_follow_ends_with_the_container() {
    let fixture = Fixture::new("logs");
    let mut spec = fixture.spec("talker");
    spec.env.insert("TESTBOX_BODY".into(), "hello".into());
    let id = fixture.engine.create_and_start(&spec).await.unwrap();
    fixture
        .wait_for(&id, "running", |s| s.state == ImageState::Running)
        .await;
    let lines = common::poll("the start-up lines", || async {
        let lines = fixture
            .engine
            .log_lines(
                &id,
                &LogQuery {
                    tail: 10,
                    since_ns: None,
                },
            )
            .await
            .unwrap();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    assert_eq!(lines[0].text, "testbox started");
    assert_eq!(lines[0].stream, LogStream::Stdout);
    assert!(lines.iter().any(|l| l.text == "env TESTBOX_BODY=hello"));
    assert!(lines.iter().all(|l| l.at_ns.is_some()));
    let last = lines.last().unwrap().at_ns;
    let tail = fixture
        .engine
        .log_lines(
            &id,
            &LogQuery {
                tail: 1,
                since_ns: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(tail.len(), 1);
    // Nothing was written after the last line: `since` that line gives nothing.
    let after = fixture
        .engine
        .log_lines(
            &id,
            &LogQuery {
                tail: 100,
                since_ns: last,
            },
        )
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");

    // Following: the tail first, then what the container writes until it stops.
    let mut follow = fixture.engine.follow_logs(&id, 1);
    let first = tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        Some(first.text.clone()),
        tail.first().map(|l| l.text.clone())
    );
    fixture.engine.stop(&id, 5).await.unwrap();
    let rest: Vec<String> = tokio::time::timeout(
        Duration::from_secs(20),
        follow.map(|line| line.unwrap().text).collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends with the container");
    assert!(rest.contains(&"testbox got SIGTERM".to_owned()), "{rest:?}");
}

#[tokio::test]
async fn exec_is_bounded_in_time_and_output_and_reports_failures() {
    let fixture = Fixture::new("exec");
    let mut spec = fixture.spec("box");
    spec.env.insert("TESTBOX_BODY".into(), "x".repeat(300));
    let id = fixture.engine.create_and_start(&spec).await.unwrap();
    fixture
        .wait_for(&id, "running", |s| s.state == ImageState::Running)
        .await;

    // A second testbox prints the container's environment, then idles: the time limit
    // ends the request, and the output is cut at the size limit.
    let started = std::time::Instant::now();
    let output = fixture
        .engine
        .exec(
            &id,
            &ExecRequest {
                command: vec!["/usr/local/bin/testbox".into()],
                timeout_secs: 2,
                max_output_bytes: 100,
            },
        )
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(output.timed_out, "{output:?}");
    assert_eq!(output.exit_code, None);
    assert!(output.truncated, "{output:?}");
    assert_eq!(output.output.len(), 100);
    assert!(output.output.starts_with("testbox started"), "{output:?}");

    // A program the image lacks: Docker's exit code for it, not a hang.
    let missing = fixture
        .engine
        .exec(
            &id,
            &ExecRequest {
                command: vec!["/bin/sh".into()],
                timeout_secs: 10,
                max_output_bytes: 4096,
            },
        )
        .await
        .unwrap();
    assert!(!missing.timed_out);
    assert!(
        matches!(missing.exit_code, Some(code) if code != 0),
        "{missing:?}"
    );

    // A stopped container cannot run commands.
    fixture.engine.stop(&id, 5).await.unwrap();
    let refused = fixture
        .engine
        .exec(
            &id,
            &ExecRequest {
                command: vec!["/usr/local/bin/testbox".into()],
                timeout_secs: 2,
                max_output_bytes: 100,
            },
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
}
