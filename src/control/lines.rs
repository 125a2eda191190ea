//! Lines read from the agent's socket into memory that is wiped once read: an `Answer`
//! line carries what the user typed (a password, a one-time code). A `BufReader` would
//! keep those bytes in its buffer, and a growing `String` in the allocations it leaves.

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

/// The longest line taken: a mount request with many paths fits many times over.
pub const MAX_LINE: usize = 256 * 1024;

/// Newline-separated lines of a stream, each handed out in wiped memory.
pub struct WipedLines<R> {
    rd: R,
    /// Read and not yet handed out. Its capacity is fixed: growing would copy the bytes
    /// and free the old allocation unwiped.
    buf: Zeroizing<Vec<u8>>,
}

impl<R: AsyncRead + Unpin> WipedLines<R> {
    pub fn new(rd: R) -> WipedLines<R> {
        WipedLines { rd, buf: Zeroizing::new(Vec::with_capacity(MAX_LINE)) }
    }

    /// The next line, without its newline; `None` when the stream ends. Cancel safe:
    /// what was read stays for the next call.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = Zeroizing::new(Vec::with_capacity(end));
                line.extend_from_slice(&self.buf[..end]);
                self.buf.drain(..=end);
                return Ok(Some(line));
            }
            if self.buf.len() == self.buf.capacity() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a line longer than {MAX_LINE} bytes"),
                ));
            }
            // Into the spare capacity only (there is some: checked above), never growing.
            if self.rd.read_buf(&mut *self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_come_out_whole_in_wiped_memory_without_the_buffer_growing() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut lines = WipedLines::new(rx);
        let capacity = lines.buf.capacity();
        let writer = tokio::spawn(async move {
            tx.write_all(b"first\nsec").await.unwrap();
            tx.write_all(b"ond\n").await.unwrap();
            tx.write_all(&vec![b'x'; 1000]).await.unwrap();
            tx.write_all(b"\nlast, unfinished").await.unwrap();
        });
        let line: Zeroizing<Vec<u8>> = lines.next_line().await.unwrap().unwrap();
        assert_eq!(&line[..], b"first");
        assert_eq!(&lines.next_line().await.unwrap().unwrap()[..], b"second");
        assert_eq!(lines.next_line().await.unwrap().unwrap().len(), 1000);
        writer.await.unwrap();
        assert!(lines.next_line().await.unwrap().is_none(), "an unfinished line at the end is no line");
        assert_eq!(lines.buf.capacity(), capacity, "never reallocated");
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_refused() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut lines = WipedLines::new(rx);
        let writer = tokio::spawn(async move {
            let _ = tx.write_all(&vec![b'x'; MAX_LINE + 1]).await;
        });
        let e = lines.next_line().await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        drop(lines);
        writer.await.unwrap();
    }
}
