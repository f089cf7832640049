//! Every protocol limit, named, with the RFC section that sets or allows it.

/// Longest command line including CRLF. RFC 5321 4.5.3.1.4: 512 octets.
/// Extensions may raise it (RFC 1870 SIZE adds parameters to MAIL: 4.5.3.1.4
/// lets each extension add up to its own; we allow MAIL/RCPT lines of
/// `COMMAND_LINE_MAX + PARAMS_EXTRA`).
pub const COMMAND_LINE_MAX: usize = 512;

/// Extra octets allowed on MAIL/RCPT lines for ESMTP parameters (RFC 5321
/// 4.5.3.1.4 permits extensions to extend the line; Postfix allows 2048 in
/// total by default). We accept up to 1024 octets in total.
pub const PARAMS_EXTRA: usize = 512;

/// Longest text line in DATA including CRLF. RFC 5321 4.5.3.1.6: 1000 octets.
pub const TEXT_LINE_MAX: usize = 1000;

/// Longest reply line including CRLF. RFC 5321 4.5.3.1.5: 512 octets.
pub const REPLY_LINE_MAX: usize = 512;

/// Most lines in one multi-line reply we accept from a peer. Not set by the
/// RFC; bounds the client parser's memory (EHLO replies have ~20 lines).
pub const REPLY_LINES_MAX: usize = 100;

/// Local part: RFC 5321 4.5.3.1.1, 64 octets.
pub const LOCAL_PART_MAX: usize = 64;

/// Domain: RFC 5321 4.5.3.1.2, 255 octets.
pub const DOMAIN_MAX: usize = 255;

/// Path (reverse or forward, with angle brackets): RFC 5321 4.5.3.1.3,
/// 256 octets.
pub const PATH_MAX: usize = 256;

/// Recipients per message: RFC 5321 4.5.3.1.8 requires accepting at least
/// 100. Default limit.
pub const RECIPIENTS_DEFAULT: usize = 1000;
/// Lowest allowed recipient limit (RFC 5321 4.5.3.1.8).
pub const RECIPIENTS_MIN: usize = 100;

/// Default message size limit, advertised in SIZE (RFC 1870): 35 MiB.
pub const MESSAGE_BYTES_DEFAULT: usize = 35 * 1024 * 1024;

/// Error replies without an accepted message in between after which the
/// server closes the session with 421 (RFC 5321 4.3.2 lets a server close
/// after repeated errors; Postfix's smtpd_hard_error_limit defaults to 20).
pub const ERRORS_MAX_DEFAULT: u32 = 20;

/// NOOP, VRFY, RSET and HELP without an accepted message in between after
/// which each further one counts as an error (toward the error limit, so
/// a session that only idles with them is closed): Postfix's
/// smtpd_junk_command_limit, whose default this is.
pub const JUNK_COMMANDS_MAX_DEFAULT: u32 = 100;

/// Largest BDAT chunk size we accept in one command (RFC 3030 does not
/// bound it; the message size limit does). Parsing bound only.
pub const BDAT_SIZE_DIGITS_MAX: usize = 20;
