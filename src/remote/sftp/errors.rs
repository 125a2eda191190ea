//! SFTP failures as the remote layer reports them, and the link told of a dead connection.

use super::*;

impl From<Unavailable> for RemoteError {
    fn from(e: Unavailable) -> RemoteError {
        match e {
            Unavailable::Down(m) => RemoteError::Unavailable(m),
            Unavailable::Failed(m) => RemoteError::LinkFailed(m),
        }
    }
}

/// Maps an error, telling `link` when the connection itself failed.
pub(super) fn report(link: &SftpLink, conn: &SftpConn, e: SftpError) -> RemoteError {
    let e = map_err(e);
    if e.outcome_unknown() {
        link.report_failure(conn.generation, &e.to_string());
    }
    e
}

pub(super) fn map_err(err: SftpError) -> RemoteError {
    match err {
        SftpError::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => RemoteError::NotFound,
            StatusCode::PermissionDenied => RemoteError::PermissionDenied,
            StatusCode::BadMessage => RemoteError::BadMessage(s.error_message),
            StatusCode::OpUnsupported => RemoteError::Unsupported,
            StatusCode::Eof => RemoteError::Eof,
            StatusCode::NoConnection | StatusCode::ConnectionLost => RemoteError::Disconnected(s.error_message),
            StatusCode::Failure | StatusCode::Ok => RemoteError::ServerFailure(s.error_message),
        },
        SftpError::Timeout => RemoteError::Timeout,
        SftpError::Limited(m) => RemoteError::BadMessage(m),
        SftpError::UnexpectedPacket => RemoteError::ServerFailure("unexpected reply from the server".into()),
        SftpError::IO(m) | SftpError::UnexpectedBehavior(m) => RemoteError::Disconnected(m),
    }
}
