//! [`ServerConfig`]: the static settings shared by all sessions of a core.

/// Static settings of a server session (shared by all sessions of a core).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message accepted (advertised as SIZE, RFC 1870).
    pub message_bytes_max: usize,
    /// Recipients per message (RFC 5321 4.5.3.1.8: at least 100).
    pub recipients_max: usize,
    /// Error replies after which the session is closed with 421.
    pub errors_max: u32,
    /// NOOP/VRFY/RSET/HELP without an accepted message in between after
    /// which each one counts as an error.
    pub junk_commands_max: u32,
    /// Extra EHLO keywords (later: the shadow-link extension).
    pub extra_ehlo: Vec<String>,
    /// EHLO line advertised only to clients the policy allows the shadow
    /// link (`XSHADOW <node> <database id>`).
    pub shadow_ehlo: Option<String>,
    /// Proxy mode (a front end): MAIL, RCPT and DATA are answered by the
    /// caller and the content is handed on in pieces (see the module
    /// documentation of [`crate::server`]).
    pub proxy: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            message_bytes_max: crate::limits::MESSAGE_BYTES_DEFAULT,
            recipients_max: crate::limits::RECIPIENTS_DEFAULT,
            errors_max: crate::limits::ERRORS_MAX_DEFAULT,
            junk_commands_max: crate::limits::JUNK_COMMANDS_MAX_DEFAULT,
            extra_ehlo: Vec::new(),
            shadow_ehlo: None,
            proxy: false,
        }
    }
}
