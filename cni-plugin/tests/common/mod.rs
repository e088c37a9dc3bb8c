//! A fake portiso agent for tests: a thread serving a real unix socket in a fresh temp dir,
//! answering canned responses in order and recording every request it got.
#![allow(dead_code)]

use portiso_agent_api::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct FakeAgent {
    pub dir: PathBuf,
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// A fresh, empty directory under the system temp dir; unique per process and call so tests
/// can run in parallel.
pub fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("portiso-cni-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl FakeAgent {
    /// Serves one connection per canned response, then stops listening (so further calls
    /// find nobody, like a dead agent).
    pub fn start(responses: Vec<Response>) -> FakeAgent {
        let dir = temp_dir("agent");
        let socket = dir.join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake agent socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for response in responses {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let request: Request =
                    serde_json::from_str(&line).expect("plugin sent a valid Request");
                seen.lock().expect("lock").push(request);
                let mut answer = serde_json::to_vec(&response).expect("encode response");
                answer.push(b'\n');
                let _ = reader.get_mut().write_all(&answer);
            }
        });
        FakeAgent {
            dir,
            socket,
            requests,
        }
    }

    /// The requests received so far. The plugin reads the answer only after the request was
    /// recorded, so once the plugin returned, its request is here.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
