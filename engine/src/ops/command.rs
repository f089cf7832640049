//! What the admin thread asks a core to do, and what a core answers.
//!
//! Requests travel over one bounded channel per core
//! ([`super::Ops::send`]); each carries a reply channel the admin thread
//! waits on. Everything here is plain data (serde, for the JSON API).

use serde::{Deserialize, Serialize};

/// Which queued messages an action is for. Every field given must match;
/// no field at all matches nothing unless `all` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// One message by queue id (20 hex digits; the 14 of an id from
    /// before ids named their store are taken as this node's).
    pub id: Option<String>,
    /// A destination: `pool:NAME`, `mx:DOMAIN`, a pool name or a
    /// recipient domain.
    pub destination: Option<String>,
    /// The envelope sender (case-insensitive; `<>` or "" for the null
    /// sender).
    pub sender: Option<String>,
    /// One recipient address (case-insensitive).
    pub recipient: Option<String>,
    /// Every queued message.
    pub all: bool,
}

impl Selector {
    /// Does it name anything?
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.id.is_none()
            && self.destination.is_none()
            && self.sender.is_none()
            && self.recipient.is_none()
    }

    /// Only recipients going to the selected destination or recipient are
    /// acted on (bounce, delete); `None`: all pending recipients.
    pub fn narrows_recipients(&self) -> bool {
        self.destination.is_some() || self.recipient.is_some()
    }
}

/// A queue action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Retry now (`postqueue -f`).
    Flush,
    /// Never attempted, never expired, until released (`postsuper -h`).
    Hold,
    /// Held -> due at once (`postsuper -H`).
    Release,
    /// Pending recipients bounce now, DSN to the sender.
    Bounce,
    /// Pending recipients dropped, no DSN (`postsuper -d`).
    Delete,
}

impl Action {
    /// The name (API path, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Flush => "flush",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Bounce => "bounce",
            Action::Delete => "delete",
        }
    }

    /// From the API path.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "flush" => Action::Flush,
            "hold" => Action::Hold,
            "release" => Action::Release,
            "bounce" => Action::Bounce,
            "delete" => Action::Delete,
            _ => return None,
        })
    }
}

/// The body of `POST /queue/ACTION`: a [`Selector`]'s fields, the
/// bounce reason and the dry-run switch.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActBody {
    /// [`Selector::id`].
    pub id: Option<String>,
    /// [`Selector::destination`].
    pub destination: Option<String>,
    /// [`Selector::sender`].
    pub sender: Option<String>,
    /// [`Selector::recipient`].
    pub recipient: Option<String>,
    /// [`Selector::all`].
    pub all: bool,
    /// Bounce: the operator's reason (in the DSN).
    pub reason: Option<String>,
    /// List what would be hit; change nothing.
    pub dry_run: bool,
}

impl ActBody {
    /// The selector part.
    pub fn selector(&self) -> Selector {
        Selector {
            id: self.id.clone(),
            destination: self.destination.clone(),
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            all: self.all,
        }
    }
}

/// Filters of `GET /queue/summary` (only matching recipients count).
#[derive(Clone, Debug, Default)]
pub struct SummaryFilter {
    /// Recipient domain.
    pub domain: Option<String>,
    /// Envelope sender.
    pub sender: Option<String>,
    /// Only messages at least this old (ms).
    pub min_age_ms: Option<u64>,
}

/// One destination in one core's summary (merged across cores by the
/// admin thread).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DestLine {
    /// `pool:NAME` or `mx:DOMAIN`.
    pub destination: String,
    /// `active`, `deferred`, `suspended` or `held` (set when merged).
    pub state: String,
    /// Messages with a pending recipient for it.
    pub messages: u64,
    /// Its pending recipients.
    pub recipients: u64,
    /// Bytes of those messages.
    pub bytes: u64,
    /// Age of the oldest of them, seconds.
    pub oldest_age_s: u64,
    /// Earliest next attempt (RFC 3339), none when all are held or in
    /// flight.
    pub next_attempt: Option<String>,
    /// The last error a next hop of it gave (or why none was reached).
    pub last_error: Option<String>,
    /// Of the messages, held.
    pub held: u64,
    /// Of the messages, in an attempt now.
    pub in_flight: u64,
    /// Earliest next attempt, unix ms (merging; not in the JSON).
    #[serde(skip)]
    pub next_ms: Option<u64>,
    /// When the last error was seen (merging; not in the JSON).
    #[serde(skip)]
    pub error_ms: u64,
}

/// What a core did (or, dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Acted {
    /// Messages selected.
    pub matched: u64,
    /// Of them, in an attempt now: acted on when it ends.
    pub in_flight: u64,
    /// Their queue ids.
    pub messages: Vec<String>,
}

/// A request to one core.
#[derive(Clone, Debug)]
pub enum Command {
    /// The core's part of the queue summary.
    Summary(SummaryFilter),
    /// A queue action.
    Act {
        /// What.
        action: Action,
        /// On which messages.
        selector: Selector,
        /// Bounce reason.
        reason: Option<String>,
        /// Change nothing.
        dry_run: bool,
        /// Who asked (for the log).
        by: String,
    },
    /// A suspension of `destination` began: jobs waiting for a
    /// connection there are put back.
    Suspended {
        /// The destination.
        destination: String,
    },
    /// `destination` was resumed: its messages are due now.
    Resumed {
        /// The destination.
        destination: String,
    },
    /// Run resubmission request `id` on this core's log.
    Resubmit {
        /// The request id.
        id: u64,
    },
}

/// A core's answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// To [`Command::Summary`].
    Summary(Vec<DestLine>),
    /// To [`Command::Act`].
    Acted(Acted),
    /// Done (no data).
    Done,
    /// The core could not do it.
    Failed(String),
}

/// A command with the channel its answer goes to.
pub struct Request {
    /// What.
    pub command: Command,
    /// Where the answer goes (`None`: nobody waits).
    pub reply: Option<std::sync::mpsc::SyncSender<Answer>>,
}

impl Request {
    /// Sends the answer (nobody waiting is fine).
    pub fn answer(self, a: Answer) {
        if let Some(r) = self.reply {
            let _ = r.try_send(a);
        }
    }
}
