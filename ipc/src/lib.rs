//! Messages between the components of guix-daemon-rs (filled by the daemon issue).
