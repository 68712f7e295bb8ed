//! How CUDA ranks meet: rank 0's NCCL unique id (128 bytes) handed to every rank, through a
//! TCP connection to rank 0 or a file on a shared folder, as torch's `env://` and `file://`
//! init methods do before NCCL takes over. Only the id crosses here; the collectives run on
//! NCCL's own transport.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What every connection starts with, so that a stray client (or another job on the port)
/// is told apart from a rank of this one.
const MAGIC: &[u8; 8] = b"sslab-r1";

/// Where the ranks meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendezvous {
    /// Rank 0 listens on this `host:port`; the others connect to it.
    Tcp(String),
    /// Rank 0 writes the id into this file (atomically, by a rename); the others wait for it.
    /// The folder must be one every rank sees (any local folder on one machine), and the path
    /// new for each job: a rank that finds an earlier job's file takes its id.
    File(PathBuf),
}

impl Rendezvous {
    /// `SSLAB_RENDEZVOUS` when set (`file:/path` or `host:port`), else `MASTER_ADDR` and one
    /// above `MASTER_PORT` (torchrun's own store listens on `MASTER_PORT` itself).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Rendezvous> {
        if let Some(spec) = env("SSLAB_RENDEZVOUS") {
            return Ok(match spec.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Rendezvous::File(path.into()),
                Some(_) => {
                    return Err(Error::config(
                        "SSLAB_RENDEZVOUS",
                        "`file:` needs a path, e.g. file:/shared/job-42.nccl-id",
                    ))
                }
                None => Rendezvous::Tcp(spec),
            });
        }
        let (Some(addr), Some(port)) = (env("MASTER_ADDR"), env("MASTER_PORT")) else {
            return Err(Error::config(
                "MASTER_ADDR",
                "CUDA ranks meet at MASTER_ADDR:MASTER_PORT + 1 (torchrun sets both) or at \
                 SSLAB_RENDEZVOUS (host:port or file:/path); none is set",
            ));
        };
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| Error::config("MASTER_PORT", format!("'{port}' is not a port number")))?;
        let port = port.checked_add(1).ok_or_else(|| {
            Error::config("MASTER_PORT", "65535 leaves no port above it for sslab")
        })?;
        Ok(Rendezvous::Tcp(format!("{addr}:{port}")))
    }

    /// Rank 0's `id` (given on rank 0, `None` elsewhere) on every one of `size` ranks, waiting
    /// at most `timeout` for the others.
    pub fn share(
        &self,
        rank: usize,
        size: usize,
        id: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        if let (1, Some(id)) = (size, id) {
            // Nobody to meet: no port to bind or file to write.
            return Ok(id.to_vec());
        }
        match (self, rank, id) {
            (_, 0, None) | (_, 1.., Some(_)) => Err(Error::Invalid(
                "rendezvous: rank 0, and only rank 0, brings the id".into(),
            )),
            (Rendezvous::Tcp(addr), 0, Some(id)) => serve(addr, size, id, deadline),
            (Rendezvous::Tcp(addr), _, None) => fetch(addr, rank, size, deadline),
            (Rendezvous::File(path), 0, Some(id)) => {
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                std::fs::write(
                    &tmp,
                    [&MAGIC[..], &(size as u32).to_le_bytes(), id].concat(),
                )
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|e| Error::data(path, format!("writing the rendezvous id: {e}")))?;
                Ok(id.to_vec())
            }
            (Rendezvous::File(path), _, None) => loop {
                if let Ok(bytes) = std::fs::read(path) {
                    return check_header(&bytes, size, &path.display().to_string());
                }
                if Instant::now() >= deadline {
                    return Err(Error::Invalid(format!(
                        "rendezvous: rank {rank} waited {timeout:?} for rank 0 to write {}",
                        path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            },
        }
    }
}

/// The id after a valid header of a job of `size` ranks.
fn check_header(bytes: &[u8], size: usize, from: &str) -> Result<Vec<u8>> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(Error::Invalid(format!(
            "rendezvous: {from} is not an sslab rendezvous"
        )));
    }
    let theirs = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if theirs != size {
        return Err(Error::Invalid(format!(
            "rendezvous: {from} belongs to a job of {theirs} ranks, this one has {size}"
        )));
    }
    Ok(bytes[12..].to_vec())
}

fn io(addr: &str, e: std::io::Error) -> Error {
    Error::Invalid(format!("rendezvous at {addr}: {e}"))
}

/// Rank 0: accepts the other `size − 1` ranks and sends each the id.
fn serve(addr: &str, size: usize, id: &[u8], deadline: Instant) -> Result<Vec<u8>> {
    let listener = TcpListener::bind(addr).map_err(|e| io(addr, e))?;
    listener.set_nonblocking(true).map_err(|e| io(addr, e))?;
    let mut joined = vec![false; size];
    joined[0] = true;
    while joined.iter().any(|j| !j) {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).map_err(|e| io(addr, e))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| io(addr, e))?;
                let mut hello = [0u8; 16];
                if s.read_exact(&mut hello).is_err() {
                    continue;
                }
                let Ok(_) = check_header(&hello[..12], size, addr) else {
                    continue;
                };
                let rank = u32::from_le_bytes([hello[12], hello[13], hello[14], hello[15]]);
                if let Some(j) = joined.get_mut(rank as usize) {
                    let reply = [&MAGIC[..], &(size as u32).to_le_bytes(), id].concat();
                    s.write_all(&reply).map_err(|e| io(addr, e))?;
                    *j = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (0..size).filter(|&r| !joined[r]).collect();
                    return Err(Error::Invalid(format!(
                        "rendezvous at {addr}: ranks {missing:?} did not connect in time"
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io(addr, e)),
        }
    }
    Ok(id.to_vec())
}

/// Rank > 0: connects to rank 0 (retrying while it is not listening yet) and reads the id.
fn fetch(addr: &str, rank: usize, size: usize, deadline: Instant) -> Result<Vec<u8>> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| io(addr, e))?
        .next()
        .ok_or_else(|| Error::Invalid(format!("rendezvous: {addr} resolves to nothing")))?;
    loop {
        let attempt =
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).and_then(|mut s| {
                s.set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))?;
                let hello = [
                    &MAGIC[..],
                    &(size as u32).to_le_bytes(),
                    &(rank as u32).to_le_bytes(),
                ]
                .concat();
                s.write_all(&hello)?;
                let mut reply = Vec::new();
                s.read_to_end(&mut reply)?;
                Ok(reply)
            });
        match attempt {
            Ok(reply) if !reply.is_empty() => return check_header(&reply, size, addr),
            _ if Instant::now() >= deadline => {
                return Err(Error::Invalid(format!(
                    "rendezvous: rank {rank} could not get the id from rank 0 at {addr} in time"
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

    #[test]
    fn the_meeting_point_comes_from_the_launcher_or_sslab_rendezvous() {
        let torch = [("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")];
        assert_eq!(
            Rendezvous::from_env(env(&torch)).unwrap(),
            Rendezvous::Tcp("node0:29501".into())
        );
        let file = [
            ("SSLAB_RENDEZVOUS", "file:/shared/id"),
            ("MASTER_ADDR", "x"),
        ];
        assert_eq!(
            Rendezvous::from_env(env(&file)).unwrap(),
            Rendezvous::File("/shared/id".into())
        );
        let tcp = [("SSLAB_RENDEZVOUS", "10.0.0.1:7000")];
        assert_eq!(
            Rendezvous::from_env(env(&tcp)).unwrap(),
            Rendezvous::Tcp("10.0.0.1:7000".into())
        );
        for bad in [
            &[("MASTER_ADDR", "a")][..],
            &[("MASTER_ADDR", "a"), ("MASTER_PORT", "http")],
            &[("MASTER_ADDR", "a"), ("MASTER_PORT", "65535")],
            &[("SSLAB_RENDEZVOUS", "file:")],
        ] {
            assert!(Rendezvous::from_env(env(bad)).is_err(), "{bad:?}");
        }
    }

    /// Three ranks as threads get rank 0's bytes over TCP and through a file; a job of
    /// another size, and a rank 0 that never comes, are errors, not hangs.
    #[test]
    fn every_rank_gets_rank_0s_id() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let id: Vec<u8> = (0..128).map(|i| (i * 7 % 251) as u8).collect();
        for rdv in [
            Rendezvous::Tcp(format!("127.0.0.1:{port}")),
            Rendezvous::File(dir.path().join("id")),
        ] {
            let got: Vec<Vec<u8>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..3)
                    .map(|rank| {
                        let (rdv, id) = (&rdv, &id);
                        s.spawn(move || {
                            let mine = (rank == 0).then_some(id.as_slice());
                            rdv.share(rank, 3, mine, Duration::from_secs(20)).unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(got.iter().all(|g| *g == id), "{rdv:?}");
        }
        let file = Rendezvous::File(dir.path().join("id"));
        let e = file.share(1, 4, None, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("3 ranks"), "{e}");
        let lonely = Rendezvous::File(dir.path().join("never"));
        assert!(lonely
            .share(1, 2, None, Duration::from_millis(200))
            .is_err());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nobody = Rendezvous::Tcp(format!("127.0.0.1:{port}"));
        assert!(nobody
            .share(1, 2, None, Duration::from_millis(300))
            .is_err());
        assert!(nobody
            .share(0, 2, Some(&id), Duration::from_millis(300))
            .is_err());
        assert!(nobody
            .share(0, 2, None, Duration::from_millis(300))
            .is_err());
    }
}
