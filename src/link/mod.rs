//! The SSH side: resolving where to connect, connecting, and keeping the connection that
//! the remote layer sends its SFTP requests over.

pub mod config;
pub mod error;
pub mod known_hosts;
pub mod ssh;

use std::sync::{Arc, RwLock};

pub use config::Destination;
pub use error::LinkError;
pub use ssh::SftpConn;

/// The managed link to one destination. The remote layer asks it for the current
/// connection on every request, so the connection can be replaced underneath.
pub struct Link {
    dest: Destination,
    current: RwLock<Option<Arc<SftpConn>>>,
}

impl Link {
    /// Connects to `dest`, failing with the reason if it cannot.
    pub async fn connect(dest: Destination) -> Result<Arc<Link>, LinkError> {
        let conn = ssh::connect(&dest).await?;
        Ok(Arc::new(Link { dest, current: RwLock::new(Some(Arc::new(conn))) }))
    }

    /// The live connection, or why there is none.
    pub fn conn(&self) -> Result<Arc<SftpConn>, LinkError> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        match cur.as_ref() {
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => Err(LinkError::Lost { host: self.dest.host_name.clone(), detail: "the connection is down".into() }),
        }
    }

    /// Ends the connection.
    pub async fn close(&self) {
        let conn = self.current.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = conn {
            c.close().await;
        }
    }
}
