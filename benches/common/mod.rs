//! What the benches that drive a real swarmd share: starting it on a temp dir (killed on drop) and
//! connecting to its control socket. Their service spec is `testkit::fixtures::service_spec`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::control_client::ControlClient;
use tonic::transport::Channel;

pub const SWARMD: &str = env!("CARGO_BIN_EXE_swarmd");
/// Largest response a bench accepts (ListTasks of 10 000 tasks is over tonic's 4 MiB default).
pub const MAX_MESSAGE: usize = 256 << 20;

/// A swarmd child process, killed and reaped on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts swarmd with its state in `dir/state`, its control socket at `dir/swarmd.sock` and the
/// remote API on a free loopback port, logging at `log_level` to `stderr`.
pub fn start_swarmd(dir: &Path, log_level: &str, stderr: impl Into<Stdio>) -> Daemon {
    let child = Command::new(SWARMD)
        .arg("-d")
        .arg(dir.join("state"))
        .arg("--listen-control-api")
        .arg(dir.join("swarmd.sock"))
        .args([
            "--listen-remote-api",
            "127.0.0.1:0",
            "--log-level",
            log_level,
        ])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn swarmd");
    Daemon(child)
}

/// A Control API client on `socket`, once swarmd answers there (30 s at most).
pub async fn connect(socket: &Path) -> ControlClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if socket.exists() {
            let ch = ca::control_channel(socket).expect("channel");
            let mut c = ControlClient::new(ch).max_decoding_message_size(MAX_MESSAGE);
            if c.list_clusters(api::ListClustersRequest::default())
                .await
                .is_ok()
            {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "swarmd did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
