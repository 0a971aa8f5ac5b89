//! The `prompt-router` binary as a child process, its stderr read line by line.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::Duration,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_prompt-router");

/// `prompt-router serve --simulate` on ephemeral ports, plus `extra` arguments.
pub fn serve_simulated(extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--simulate",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(extra);
    command
}

/// A running child whose stderr lines arrive on a channel; killed when dropped.
pub struct Proc {
    /// The child process.
    pub child: Child,
    /// Its stderr, one line per message.
    pub lines: mpsc::Receiver<String>,
}

/// Where a started router listens, from its "prompt-router serving" line.
pub struct Serving {
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The metrics address.
    pub metrics: SocketAddr,
}

impl Serving {
    /// Its `/metrics` URL.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// A plaintext client of its gRPC port.
    pub async fn client(
        &self,
    ) -> prompt_router::pb::prompt_router_client::PromptRouterClient<tonic::transport::Channel>
    {
        prompt_router::pb::prompt_router_client::PromptRouterClient::connect(format!(
            "http://{}",
            self.grpc
        ))
        .await
        .expect("connect")
    }
}

impl Proc {
    /// Waits for the router's serving line and returns its addresses.
    pub fn wait_serving(&self) -> Serving {
        let line = self.wait_for_line("grpc_addr");
        let addr = |key| {
            field(&line, key)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line}"))
        };
        Serving {
            grpc: addr("grpc_addr"),
            metrics: addr("metrics_addr"),
        }
    }

    /// Spawns `command` with `RUST_LOG=info` unless it sets its own, stdin and stdout closed,
    /// stderr captured.
    pub fn spawn(command: &mut Command) -> Self {
        if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a text log line holding `key=VALUE` and returns VALUE.
    pub fn wait_for_field(&self, key: &str) -> String {
        field(&self.wait_for_line(key), key).expect("the line holds the field")
    }

    /// Waits for a text log line holding `key=` and returns the whole line.
    pub fn wait_for_line(&self, key: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("process output");
            if field(&line, key).is_some() {
                return line;
            }
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
    }

    /// Sends SIGTERM and waits for the exit (blocking: call it off the async runtime).
    pub fn terminate(mut self) -> ExitStatus {
        self.sigterm();
        self.child.wait().expect("wait")
    }
}

/// The VALUE of `key=VALUE` in a text log line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("{key}="))?;
    let value = &line[at + key.len() + 1..];
    value.split_whitespace().next().map(str::to_owned)
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
