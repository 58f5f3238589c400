//! The official OpenAI and Anthropic Python SDKs parse what `stream` writes.
//!
//! Serves `StreamWriter` / `full_response` output (and `ApiError` bodies) on
//! a loopback port with a minimal HTTP/1.1 server, runs `sdk_check.py` against
//! it and checks that each SDK reassembled the text and the usage, and that
//! `parse_request` accepted what the SDKs sent.
//!
//! Python: `$KVTIER_SDK_PYTHON`, else the venv `~/.cache/kvtier-sdk-venv`
//! (created with `pip install openai anthropic` when missing). Skipped, with
//! a message, only when there is no `python3`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use kvtier_prompt::stream::{full_response, StreamWriter, Usage};
use kvtier_prompt::{parse_request, Api, ModelCall};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REPLY: [&str; 4] = ["Hello", " from kvtier", "! ✓ 猫", "\nbye"];
const USAGE: Usage = Usage {
    prompt_tokens: 42,
    cached_tokens: 16,
    completion_tokens: 7,
};

fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KVTIER_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = PathBuf::from(home).join(".cache/kvtier-sdk-venv");
    let py = venv.join("bin/python");
    let has_sdks = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import openai, anthropic"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && has_sdks(&py) {
        return Some(py);
    }
    if Command::new("python3").arg("--version").output().is_err() {
        return None;
    }
    eprintln!(
        "sdk test: creating {} with openai + anthropic",
        venv.display()
    );
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&py)
            .args(["-m", "pip", "install", "-q", "openai", "anthropic"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok && has_sdks(&py),
        "could not install the openai/anthropic SDKs into {}",
        venv.display()
    );
    Some(py)
}

async fn read_request(
    sock: &mut TcpStream,
) -> std::io::Result<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((path, headers, body))
}

async fn serve(mut sock: TcpStream, seen: Arc<Mutex<Vec<ModelCall>>>) -> std::io::Result<()> {
    let (path, headers, body) = read_request(&mut sock).await?;
    let path = path.split('?').next().unwrap_or_default();
    let api = [Api::ChatCompletions, Api::Responses, Api::Messages]
        .into_iter()
        .find(|a| a.path() == path);
    let Some(api) = api else {
        let msg = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        return sock.write_all(msg.as_bytes()).await;
    };
    let call = match parse_request(api, &body, &headers) {
        Ok(call) => call,
        Err(e) => {
            let body = e.body(api).to_string();
            let resp = format!(
                "HTTP/1.1 {} Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                e.status,
                body.len()
            );
            return sock.write_all(resp.as_bytes()).await;
        }
    };
    let id = match api {
        Api::ChatCompletions => "chatcmpl-test1",
        Api::Responses => "resp_test1",
        Api::Messages => "msg_test1",
    };
    let stream = call.stream;
    let model = call.model.clone();
    seen.lock().unwrap().push(call);
    if stream {
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n")
            .await?;
        let mut w = StreamWriter::new(api, id, &model);
        let mut frames = w.start(USAGE);
        for piece in REPLY {
            frames.extend(w.delta(piece));
        }
        frames.extend(w.finish(USAGE));
        for frame in frames {
            sock.write_all(frame.as_bytes()).await?;
            sock.flush().await?;
        }
    } else {
        let body = full_response(api, id, &model, &REPLY.concat(), USAGE).to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await?;
    }
    sock.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_reassemble_streams_and_bodies() {
    let Some(python) = python() else {
        kvtier_testkit::prereq::missing(
            "python3",
            "install python3 with venv; the test then makes ~/.cache/kvtier-sdk-venv with the SDKs",
        );
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(sock, seen).await {
                    eprintln!("test server: {e}");
                }
            });
        }
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_check.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(format!("http://{addr}"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk_check.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expected_usage =
        serde_json::json!({"prompt_tokens": 42, "cached_tokens": 16, "completion_tokens": 7});
    let mut cases = Vec::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let case = v["case"].as_str().unwrap().to_string();
        match case.as_str() {
            "messages_error" => assert_eq!(
                v["text"],
                "invalid_request_error: messages[0].content: expected a string or an array of content blocks, got a number"
            ),
            "chat_error" => assert_eq!(
                v["text"],
                "invalid_request_error messages[0].content: messages[0].content: expected a string or an array of content parts, got a number"
            ),
            _ => {
                assert_eq!(v["text"], REPLY.concat(), "{case}: text");
                assert_eq!(v["usage"], expected_usage, "{case}: usage");
            }
        }
        cases.push(case);
    }
    assert_eq!(
        cases,
        [
            "chat_stream",
            "chat_stream_helper",
            "chat_full",
            "responses_stream",
            "responses_stream_helper",
            "responses_full",
            "messages_stream",
            "messages_stream_raw",
            "messages_full",
            "messages_error",
            "chat_error",
        ]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 9);
    // what the SDKs sent parsed, hints included
    for call in seen.iter().filter(|c| c.hints.osl == Some(64)) {
        assert_eq!(call.hints.priority, 2);
        assert_eq!(call.hints.latency_sensitivity, 0.5);
    }
    assert_eq!(seen.iter().filter(|c| c.hints.osl == Some(64)).count(), 4);
    assert_eq!(seen[0].messages[0].content, "be brief");
    assert!(seen[0].stream && !seen[2].stream);
    assert_eq!(seen[6].hints.keep_warm_ms, Some(3_600_000));
    assert_eq!(seen[6].max_tokens, Some(64));
}
