//! WebTransport (in progress)
