//! Debug logging shaped like NCCL's: `ZCCL_DEBUG`, `ZCCL_DEBUG_SUBSYS` and
//! `ZCCL_DEBUG_FILE`, on top of [`tracing`].
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `ZCCL_DEBUG` | `NONE`, `VERSION`, `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE` (any case) | `WARN` |
//! | `ZCCL_DEBUG_SUBSYS` | comma-separated subsystems shown at `INFO` and below; `^` first excludes them; `ALL` | `INIT,BOOTSTRAP,ENV` |
//! | `ZCCL_DEBUG_FILE` | write to this file instead of stderr; `%h` = host name, `%p` = pid | stderr |
//!
//! As in NCCL, warnings and errors are shown whatever `ZCCL_DEBUG_SUBSYS`
//! says; the subsystem filter applies to `INFO`, `DEBUG` and `TRACE`.
//! `VERSION` prints only the version line (also printed at `INFO` and
//! above); `NONE` prints nothing. Only zccl's own events are shown (targets
//! `zccl`, `zccl::*` and `zccl_*::*`); a program that wants its own logs too
//! installs its own subscriber (see [`init_from_env`]).
//!
//! Each line reads like NCCL's `host:pid:tid [rank] NCCL INFO ...`:
//!
//! ```text
//! 2026-05-01T10:00:00.123456Z node7:4242:4250 [3] zccl INFO INIT communicator ready rank=3 size=8
//! ```
//!
//! The rank is the event's own `rank` field, else the `rank` field of an
//! enclosing span, else the rank given to [`set_rank`]; a line without any
//! of these carries no `[rank]`.
//!
//! ## Subsystems and tracing targets
//!
//! Code logs to a subsystem with the target constants of this module,
//! `tracing::info!(target: zccl_runtime::logging::NET, ...)`. Events logged
//! with the default target (the module path) are mapped as well:
//!
//! | subsystem | target constant | also module paths |
//! |---|---|---|
//! | `INIT` | [`INIT`] = `zccl::init` | `zccl_runtime::communicator`, `::logging`, `::launcher`, the `zccl` crate |
//! | `BOOTSTRAP` | [`BOOTSTRAP`] = `zccl::bootstrap` | `zccl_runtime::bootstrap`, `::unique_id` |
//! | `NET` | [`NET`] = `zccl::net` | `zccl_transports::*` (except `::shm`) |
//! | `SHM` | [`SHM`] = `zccl::shm` | `zccl_transports::shm` |
//! | `P2P` | [`P2P`] = `zccl::p2p` | `zccl_runtime::engine`, `::handle`, `::buffer` |
//! | `COLL` | [`COLL`] = `zccl::coll` | `zccl_primitives::*` |
//! | `GRAPH` | [`GRAPH`] = `zccl::graph` | `zccl_topology::*` |
//! | `ROUTE` | [`ROUTE`] = `zccl::route` | `zccl_runtime::router` |
//! | `ENV` | [`ENV`] = `zccl::env` | `zccl_runtime::config`, `::launcher_env` |
//!
//! Other `zccl` targets belong to no subsystem and are shown at `INFO` and
//! below only with `ALL` or an exclusion list (`^...`).
//!
//! [`parse`] is pure and table-tested; [`init_from_env`] installs the
//! subscriber.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use zccl_transports::ifname::Interface;

use crate::error::{Error, Result};

/// Target of the `INIT` subsystem: communicator creation, NIC choice, version.
pub const INIT: &str = "zccl::init";
/// Target of the `BOOTSTRAP` subsystem: the root and the address-book exchange.
pub const BOOTSTRAP: &str = "zccl::bootstrap";
/// Target of the `NET` subsystem: sockets and the network transports.
pub const NET: &str = "zccl::net";
/// Target of the `SHM` subsystem: the shared-memory transport.
pub const SHM: &str = "zccl::shm";
/// Target of the `P2P` subsystem: point-to-point ops and the progress engine.
pub const P2P: &str = "zccl::p2p";
/// Target of the `COLL` subsystem: collectives and sequence-parallel primitives.
pub const COLL: &str = "zccl::coll";
/// Target of the `GRAPH` subsystem: the topology probe.
pub const GRAPH: &str = "zccl::graph";
/// Target of the `ROUTE` subsystem: the NIC-aware router.
pub const ROUTE: &str = "zccl::route";
/// Target of the `ENV` subsystem: configuration read from the environment.
pub const ENV: &str = "zccl::env";

/// A `ZCCL_DEBUG` level, from quietest to loudest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DebugLevel {
    /// Nothing at all.
    None,
    /// Only the version line.
    Version,
    /// Errors.
    Error,
    /// Errors and warnings (the default).
    Warn,
    /// Also informational messages of the chosen subsystems.
    Info,
    /// Also debug messages.
    Debug,
    /// Everything.
    Trace,
}

const LEVEL_NAMES: &str = "NONE, VERSION, ERROR, WARN, INFO, DEBUG, TRACE";

impl DebugLevel {
    /// Parses a `ZCCL_DEBUG` value, ignoring case and surrounding blanks.
    ///
    /// ```
    /// use zccl_runtime::logging::DebugLevel;
    /// assert_eq!(DebugLevel::parse("info").unwrap(), DebugLevel::Info);
    /// assert!(DebugLevel::parse("verbose").unwrap_err().to_string().contains("WARN, INFO"));
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "NONE" | "OFF" => Self::None,
            "VERSION" => Self::Version,
            "ERROR" => Self::Error,
            "WARN" | "WARNING" => Self::Warn,
            "INFO" => Self::Info,
            "DEBUG" => Self::Debug,
            "TRACE" => Self::Trace,
            _ => {
                return Err(Error::Config(format!(
                    "ZCCL_DEBUG={} is not a level; use one of {LEVEL_NAMES}",
                    crate::envvars::shown(s)
                )));
            }
        })
    }

    /// The most verbose `tracing` level shown.
    pub fn level_filter(self) -> LevelFilter {
        match self {
            Self::None | Self::Version => LevelFilter::OFF,
            Self::Error => LevelFilter::ERROR,
            Self::Warn => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }

    /// Whether the version line is printed at this level.
    pub fn shows_version(self) -> bool {
        self == Self::Version || self >= Self::Info
    }
}

/// A subsystem of `ZCCL_DEBUG_SUBSYS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subsystem {
    /// Communicator creation, NIC choice.
    Init,
    /// Bootstrap root and address-book exchange.
    Bootstrap,
    /// Sockets and network transports.
    Net,
    /// Shared-memory transport.
    Shm,
    /// Point-to-point ops, progress engine.
    P2p,
    /// Collectives and primitives.
    Coll,
    /// Topology probe.
    Graph,
    /// NIC-aware router.
    Route,
    /// Environment configuration.
    Env,
}

impl Subsystem {
    /// Every subsystem.
    pub const ALL: [Subsystem; 9] = [
        Self::Init,
        Self::Bootstrap,
        Self::Net,
        Self::Shm,
        Self::P2p,
        Self::Coll,
        Self::Graph,
        Self::Route,
        Self::Env,
    ];

    /// Its `ZCCL_DEBUG_SUBSYS` name (`NET`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Bootstrap => "BOOTSTRAP",
            Self::Net => "NET",
            Self::Shm => "SHM",
            Self::P2p => "P2P",
            Self::Coll => "COLL",
            Self::Graph => "GRAPH",
            Self::Route => "ROUTE",
            Self::Env => "ENV",
        }
    }

    /// Its tracing target (`zccl::net`).
    pub fn target(self) -> &'static str {
        match self {
            Self::Init => INIT,
            Self::Bootstrap => BOOTSTRAP,
            Self::Net => NET,
            Self::Shm => SHM,
            Self::P2p => P2P,
            Self::Coll => COLL,
            Self::Graph => GRAPH,
            Self::Route => ROUTE,
            Self::Env => ENV,
        }
    }

    /// Parses a name, ignoring case.
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|x| x.name().eq_ignore_ascii_case(s))
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The subsystem of a tracing target: a target constant of this module
    /// (or below it, `zccl::net::tcp`) or a zccl module path.
    ///
    /// ```
    /// use zccl_runtime::logging::{NET, Subsystem};
    /// assert_eq!(Subsystem::of_target(NET), Some(Subsystem::Net));
    /// assert_eq!(Subsystem::of_target("zccl_runtime::bootstrap"), Some(Subsystem::Bootstrap));
    /// assert_eq!(Subsystem::of_target("zccl_transports::tcp"), Some(Subsystem::Net));
    /// assert_eq!(Subsystem::of_target("hyper::client"), None);
    /// ```
    pub fn of_target(target: &str) -> Option<Self> {
        let mut parts = target.split("::");
        let krate = parts.next()?;
        let module = parts.next().unwrap_or("");
        match krate {
            "zccl" if module.is_empty() => Some(Self::Init),
            "zccl" => Self::from_name(module).or(Some(Self::Init)),
            "zccl_runtime" => match module {
                "communicator" | "logging" | "launcher" | "" => Some(Self::Init),
                "bootstrap" | "unique_id" => Some(Self::Bootstrap),
                "engine" | "handle" | "buffer" => Some(Self::P2p),
                "config" | "launcher_env" => Some(Self::Env),
                "router" => Some(Self::Route),
                _ => None,
            },
            "zccl_transports" if module == "shm" => Some(Self::Shm),
            "zccl_transports" => Some(Self::Net),
            "zccl_primitives" => Some(Self::Coll),
            "zccl_topology" => Some(Self::Graph),
            _ => None,
        }
    }
}

/// Whether `target` belongs to zccl (`zccl`, `zccl::*`, `zccl_*`).
pub fn is_zccl_target(target: &str) -> bool {
    target == "zccl" || target.starts_with("zccl::") || target.starts_with("zccl_")
}

/// A parsed `ZCCL_DEBUG_SUBSYS`: which subsystems are shown at `INFO` and below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubsystemSet {
    bits: u16,
    /// Whether zccl targets that map to no subsystem are shown.
    other: bool,
}

impl Default for SubsystemSet {
    /// NCCL's default: `INIT,BOOTSTRAP,ENV`.
    fn default() -> Self {
        Self::of(&[Subsystem::Init, Subsystem::Bootstrap, Subsystem::Env])
    }
}

impl SubsystemSet {
    /// Every subsystem (`ALL`), and zccl targets of none.
    pub const ALL: Self = Self {
        bits: u16::MAX,
        other: true,
    };

    /// Exactly these subsystems.
    pub fn of(subsystems: &[Subsystem]) -> Self {
        Self {
            bits: subsystems.iter().fold(0, |b, s| b | s.bit()),
            other: false,
        }
    }

    /// Parses `ZCCL_DEBUG_SUBSYS`: `INIT,NET`, `ALL`, `^NET,SHM` (all but
    /// these). Names ignore case; an unknown name is an error listing the
    /// valid ones; an empty value gives the default.
    ///
    /// ```
    /// use zccl_runtime::logging::{Subsystem, SubsystemSet};
    /// let s = SubsystemSet::parse("^net,SHM").unwrap();
    /// assert!(s.contains(Subsystem::Init) && !s.contains(Subsystem::Net));
    /// assert!(SubsystemSet::parse("NETWORK").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.is_empty() {
            return Ok(Self::default());
        }
        let (exclude, list) = match t.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let mut set = Self {
            bits: 0,
            other: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name.eq_ignore_ascii_case("ALL") {
                set = Self::ALL;
            } else if let Some(sub) = Subsystem::from_name(name) {
                set.bits |= sub.bit();
            } else {
                let valid: Vec<&str> = Subsystem::ALL.iter().map(|s| s.name()).collect();
                return Err(Error::Config(format!(
                    "ZCCL_DEBUG_SUBSYS={}: unknown subsystem {}; use {}, ALL, or ^ to exclude",
                    crate::envvars::shown(s),
                    crate::envvars::shown(name),
                    valid.join(", ")
                )));
            }
        }
        Ok(if exclude {
            Self {
                bits: !set.bits,
                other: !set.other,
            }
        } else {
            set
        })
    }

    /// Whether `sub` is shown.
    pub fn contains(&self, sub: Subsystem) -> bool {
        self.bits & sub.bit() != 0
    }

    /// Whether events of `target` are shown (non-zccl targets never are).
    pub fn allows_target(&self, target: &str) -> bool {
        if !is_zccl_target(target) {
            return false;
        }
        match Subsystem::of_target(target) {
            Some(sub) => self.contains(sub),
            None => self.other,
        }
    }
}

/// What the `ZCCL_DEBUG*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `ZCCL_DEBUG`.
    pub level: DebugLevel,
    /// `ZCCL_DEBUG_SUBSYS`.
    pub subsystems: SubsystemSet,
    /// `ZCCL_DEBUG_FILE` as given (with `%h`/`%p` unexpanded); `None` = stderr.
    pub file: Option<String>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: DebugLevel::Warn,
            subsystems: SubsystemSet::default(),
            file: None,
        }
    }
}

impl LogSettings {
    /// Whether an event of `level` and `target` is shown.
    ///
    /// ```
    /// use tracing::Level;
    /// use zccl_runtime::logging::{parse, NET, INIT};
    /// let s = parse(|k| (k == "ZCCL_DEBUG").then(|| "INFO".into())).unwrap();
    /// assert!(s.enabled(&Level::INFO, INIT));
    /// assert!(!s.enabled(&Level::INFO, NET)); // NET is not in the default subsystems
    /// assert!(s.enabled(&Level::WARN, NET)); // warnings always are
    /// assert!(!s.enabled(&Level::WARN, "my_app"));
    /// ```
    pub fn enabled(&self, level: &Level, target: &str) -> bool {
        if !is_zccl_target(target) || *level > self.level.level_filter() {
            return false;
        }
        *level <= Level::WARN || self.subsystems.allows_target(target)
    }

    /// The log file for `host` and `pid`, if one was asked for.
    pub fn file_path(&self, host: &str, pid: u32) -> Option<String> {
        self.file.as_deref().map(|t| expand_file_name(t, host, pid))
    }
}

/// Reads `ZCCL_DEBUG`, `ZCCL_DEBUG_SUBSYS` and `ZCCL_DEBUG_FILE` through
/// `get` (pure). Unset or empty variables take their defaults; invalid
/// values are errors naming the valid ones.
///
/// ```
/// use zccl_runtime::logging::{parse, DebugLevel};
/// let s = parse(|k| match k {
///     "ZCCL_DEBUG" => Some("trace".into()),
///     "ZCCL_DEBUG_FILE" => Some("/tmp/zccl.%h.%p.log".into()),
///     _ => None,
/// }).unwrap();
/// assert_eq!(s.level, DebugLevel::Trace);
/// assert_eq!(s.file_path("n1", 42).as_deref(), Some("/tmp/zccl.n1.42.log"));
/// ```
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<LogSettings> {
    let nonempty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let level = nonempty("ZCCL_DEBUG")
        .map(|v| DebugLevel::parse(&v))
        .transpose()?
        .unwrap_or(DebugLevel::Warn);
    let subsystems = nonempty("ZCCL_DEBUG_SUBSYS")
        .map(|v| SubsystemSet::parse(&v))
        .transpose()?
        .unwrap_or_default();
    Ok(LogSettings {
        level,
        subsystems,
        file: nonempty("ZCCL_DEBUG_FILE"),
    })
}

/// Expands NCCL's `%h` (host name) and `%p` (pid) in a `ZCCL_DEBUG_FILE`
/// value; `%%` is a literal `%`, any other `%x` is kept as it is.
///
/// ```
/// assert_eq!(zccl_runtime::logging::expand_file_name("log/%h-%p-%%-%x", "gpu1", 7), "log/gpu1-7-%-%x");
/// ```
pub fn expand_file_name(template: &str, host: &str, pid: u32) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('p') => {
                let _ = write!(out, "{pid}");
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// This host's short name (up to the first `.`), as NCCL prints it.
pub fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let short = name.split('.').next().unwrap_or("").trim();
    if short.is_empty() {
        "localhost".into()
    } else {
        short.into()
    }
}

fn thread_id() -> i64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::syscall(libc::SYS_gettid) as i64 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Unknown rank.
const RANK_UNKNOWN: i64 = -1;
/// Several different ranks were registered in this process.
const RANK_MANY: i64 = -2;
static PROCESS_RANK: AtomicI64 = AtomicI64::new(RANK_UNKNOWN);

/// Tells the log which rank this process is, for lines that carry no `rank`
/// field of their own. The communicator calls it once its rank is known. A
/// process that registers two different ranks (several communicators in one
/// process) gets no process-wide rank: only lines with a `rank` field or span
/// show one.
pub fn set_rank(rank: u32) {
    let r = i64::from(rank);
    if let Err(cur) =
        PROCESS_RANK.compare_exchange(RANK_UNKNOWN, r, Ordering::AcqRel, Ordering::Acquire)
        && cur != r
    {
        PROCESS_RANK.store(RANK_MANY, Ordering::Release);
    }
}

fn process_rank() -> Option<u64> {
    u64::try_from(PROCESS_RANK.load(Ordering::Acquire)).ok()
}

/// Logs, at `INFO` under `INIT`, the NICs a rank uses, like NCCL's
/// `NET/Socket : Using [0]eth0:10.0.0.1`.
///
/// ```
/// use zccl_transports::ifname::Interface;
/// let nics = [Interface { name: "eth0".into(), addr: "10.0.0.1".parse().unwrap() }];
/// zccl_runtime::logging::log_interfaces(3, &nics);
/// ```
pub fn log_interfaces(rank: u32, nics: &[Interface]) {
    let list: Vec<String> = nics
        .iter()
        .enumerate()
        .map(|(i, n)| format!("[{i}]{}:{}", n.name, n.addr))
        .collect();
    tracing::info!(target: INIT, rank, "using {} NIC(s): {}", nics.len(), list.join(" "));
}

/// Finds a `rank` field among recorded fields.
#[derive(Default)]
struct RankVisitor(Option<u64>);

impl Visit for RankVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "rank" {
            self.0 = Some(value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "rank" {
            self.0 = u64::try_from(value).ok();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "rank" {
            self.0 = format!("{value:?}").parse().ok();
        }
    }
}

/// The `rank` of a span, kept in its extensions.
struct SpanRank(u64);

/// Records span `rank` fields for the formatter.
struct RankLayer;

impl<S> Layer<S> for RankLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut v = RankVisitor::default();
        attrs.record(&mut v);
        if let (Some(r), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(SpanRank(r));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut v = RankVisitor::default();
        values.record(&mut v);
        if let (Some(r), Some(span)) = (v.0, ctx.span(id)) {
            let mut ext = span.extensions_mut();
            ext.remove::<SpanRank>();
            ext.insert(SpanRank(r));
        }
    }
}

/// The line layout: `time host:pid:tid [rank] zccl LEVEL SUBSYS message fields`.
struct NcclFormat {
    host: String,
    pid: u32,
}

impl NcclFormat {
    fn prefix(&self, w: &mut Writer<'_>, rank: Option<u64>) -> std::fmt::Result {
        SystemTime.format_time(w)?;
        write!(w, " {}:{}:{}", self.host, self.pid, thread_id())?;
        if let Some(r) = rank {
            write!(w, " [{r}]")?;
        }
        Ok(())
    }
}

impl<S, N> FormatEvent<S, N> for NcclFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut v = RankVisitor::default();
        event.record(&mut v);
        let rank =
            v.0.or_else(|| {
                ctx.event_scope()?
                    .find_map(|span| span.extensions().get::<SpanRank>().map(|r| r.0))
            })
            .or_else(process_rank);
        self.prefix(&mut writer, rank)?;
        let meta = event.metadata();
        let subsys = Subsystem::of_target(meta.target()).map_or(meta.target(), Subsystem::name);
        write!(writer, " zccl {} {subsys} ", meta.level())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Where lines go.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(Arc<File>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stderr => io::stderr().write(buf),
            Self::File(f) => (&**f).write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Stderr => io::stderr().lock().write_all(buf),
            Self::File(f) => (&**f).write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stderr => io::stderr().flush(),
            Self::File(f) => (&**f).flush(),
        }
    }
}

/// Installs zccl's log subscriber as configured by `ZCCL_DEBUG`,
/// `ZCCL_DEBUG_SUBSYS` and `ZCCL_DEBUG_FILE` (see the [module](self) docs).
///
/// Idempotent: only the first call in a process does anything, later calls
/// return its result. If the program already installed a global `tracing`
/// subscriber, nothing is installed (zccl's events then go to that
/// subscriber) and the variables are not read. Conversely, once zccl has
/// installed its subscriber, a program's later `set_global_default` fails:
/// a program with its own logging installs it before creating a
/// communicator. With `ZCCL_DEBUG=NONE` or `VERSION` nothing is installed.
///
/// An invalid value (or one that is not UTF-8) is an [`Error::Config`] naming
/// the variable and the valid values. A log
/// file that cannot be opened is reported on stderr and stderr is used.
///
/// ```
/// zccl_runtime::logging::init_from_env()?;
/// zccl_runtime::logging::init_from_env()?; // no effect
/// # Ok::<(), zccl_runtime::Error>(())
/// ```
pub fn init_from_env() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        if tracing::dispatcher::has_been_set() {
            return Ok(());
        }
        let settings = match crate::envvars::read_process_env(|get| parse(get)) {
            (_, Some(k)) => return Err(format!("{k} is not valid UTF-8")),
            (r, None) => r.map_err(|e| match e {
                Error::Config(m) => m,
                other => other.to_string(),
            })?,
        };
        install(&settings);
        Ok(())
    })
    .clone()
    .map_err(Error::Config)
}

fn install(settings: &LogSettings) {
    let host = short_hostname();
    let pid = std::process::id();
    let sink = match settings.file_path(&host, pid) {
        None => Sink::Stderr,
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Sink::File(Arc::new(f)),
            Err(e) => {
                eprintln!("zccl: cannot open ZCCL_DEBUG_FILE {path:?}: {e}; logging to stderr");
                Sink::Stderr
            }
        },
    };
    let format = NcclFormat { host, pid };
    if settings.level.shows_version() {
        let mut line = String::new();
        let _ = format.prefix(&mut Writer::new(&mut line), process_rank());
        let _ = writeln!(
            line,
            " zccl INFO INIT zccl version {}",
            env!("CARGO_PKG_VERSION")
        );
        let _ = sink.clone().write_all(line.as_bytes());
    }
    let max = settings.level.level_filter();
    if max == LevelFilter::OFF {
        return;
    }
    let s = settings.clone();
    let filter = tracing_subscriber::filter::filter_fn(move |meta| {
        if meta.is_span() {
            is_zccl_target(meta.target()) && *meta.level() <= max
        } else {
            s.enabled(meta.level(), meta.target())
        }
    })
    .with_max_level_hint(max);
    let fmt = tracing_subscriber::fmt::layer()
        .event_format(format)
        .with_writer(move || sink.clone());
    let subscriber =
        tracing_subscriber::registry().with(fmt.and_then(RankLayer).with_filter(filter));
    // Fails only if another subscriber won a race; then that one is used.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<LogSettings> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(|k| m.get(k).cloned())
    }

    #[test]
    fn levels() {
        for (text, want) in [
            ("VERSION", DebugLevel::Version),
            ("warn", DebugLevel::Warn),
            (" Info ", DebugLevel::Info),
            ("TRACE", DebugLevel::Trace),
            ("error", DebugLevel::Error),
            ("DEBUG", DebugLevel::Debug),
            ("none", DebugLevel::None),
        ] {
            assert_eq!(DebugLevel::parse(text).unwrap(), want, "{text}");
        }
        for bad in ["", "2", "verbose", "INFOO"] {
            let e = DebugLevel::parse(bad).unwrap_err().to_string();
            assert!(e.contains("VERSION, ERROR, WARN, INFO"), "{e}");
        }
        assert!(DebugLevel::Version.shows_version() && DebugLevel::Trace.shows_version());
        assert!(!DebugLevel::Warn.shows_version() && !DebugLevel::None.shows_version());
    }

    #[test]
    fn variables() {
        let d = settings(&[]).unwrap();
        assert_eq!(d, LogSettings::default());
        assert_eq!(d.level, DebugLevel::Warn);
        assert_eq!(
            settings(&[("ZCCL_DEBUG", "  ")]).unwrap().level,
            DebugLevel::Warn
        );
        let s = settings(&[
            ("ZCCL_DEBUG", "info"),
            ("ZCCL_DEBUG_SUBSYS", "NET,p2p"),
            ("ZCCL_DEBUG_FILE", "/tmp/z.%h.%p"),
        ])
        .unwrap();
        assert_eq!(s.level, DebugLevel::Info);
        assert_eq!(
            s.subsystems,
            SubsystemSet::of(&[Subsystem::Net, Subsystem::P2p])
        );
        assert_eq!(s.file_path("h", 9).as_deref(), Some("/tmp/z.h.9"));
        for bad in [
            vec![("ZCCL_DEBUG", "LOUD")],
            vec![("ZCCL_DEBUG_SUBSYS", "NET,DISK")],
        ] {
            assert!(matches!(settings(&bad), Err(Error::Config(_))), "{bad:?}");
        }
        let e = settings(&[("ZCCL_DEBUG_SUBSYS", "^DISK")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("INIT, BOOTSTRAP, NET, SHM, P2P"), "{e}");
    }

    #[test]
    fn subsystem_sets() {
        use Subsystem::*;
        let table: &[(&str, &[Subsystem], &[Subsystem], bool)] = &[
            // (value, shown, hidden, other zccl targets shown)
            (
                "",
                &[Init, Bootstrap, Env],
                &[Net, Shm, P2p, Coll, Graph, Route],
                false,
            ),
            (
                "INIT,BOOTSTRAP,NET,SHM,P2P",
                &[Init, Bootstrap, Net, Shm, P2p],
                &[Env, Route],
                false,
            ),
            ("ALL", &Subsystem::ALL, &[], true),
            ("all,NET", &Subsystem::ALL, &[], true),
            (
                "^NET,SHM",
                &[Init, Bootstrap, P2p, Coll, Graph, Route, Env],
                &[Net, Shm],
                true,
            ),
            ("^ALL", &[], &Subsystem::ALL, false),
            ("route, env ,", &[Route, Env], &[Init, Net], false),
        ];
        for &(text, shown, hidden, other) in table {
            let s = SubsystemSet::parse(text).unwrap();
            for &x in shown {
                assert!(s.contains(x), "{text:?} should show {x:?}");
            }
            for &x in hidden {
                assert!(!s.contains(x), "{text:?} should hide {x:?}");
            }
            assert_eq!(
                s.allows_target("zccl_runtime::somewhere"),
                other,
                "{text:?}"
            );
            assert!(!s.allows_target("tokio::runtime"), "{text:?}");
        }
    }

    #[test]
    fn targets() {
        for (target, want) in [
            (INIT, Some(Subsystem::Init)),
            (BOOTSTRAP, Some(Subsystem::Bootstrap)),
            (NET, Some(Subsystem::Net)),
            (SHM, Some(Subsystem::Shm)),
            (P2P, Some(Subsystem::P2p)),
            (COLL, Some(Subsystem::Coll)),
            (GRAPH, Some(Subsystem::Graph)),
            (ROUTE, Some(Subsystem::Route)),
            (ENV, Some(Subsystem::Env)),
            ("zccl::net::tcp", Some(Subsystem::Net)),
            ("zccl", Some(Subsystem::Init)),
            ("zccl_runtime::communicator", Some(Subsystem::Init)),
            ("zccl_runtime::bootstrap", Some(Subsystem::Bootstrap)),
            ("zccl_runtime::engine", Some(Subsystem::P2p)),
            ("zccl_runtime::config", Some(Subsystem::Env)),
            ("zccl_runtime::launcher_env", Some(Subsystem::Env)),
            ("zccl_transports::tcp", Some(Subsystem::Net)),
            ("zccl_transports::shm", Some(Subsystem::Shm)),
            ("zccl_primitives::ring", Some(Subsystem::Coll)),
            ("zccl_topology::probe", Some(Subsystem::Graph)),
            ("zccl_runtime::mystery", None),
            ("zcclx", None),
            ("tokio::net", None),
        ] {
            assert_eq!(Subsystem::of_target(target), want, "{target}");
        }
        for s in Subsystem::ALL {
            assert_eq!(Subsystem::of_target(s.target()), Some(s));
            assert_eq!(Subsystem::from_name(&s.name().to_lowercase()), Some(s));
        }
        assert!(is_zccl_target("zccl") && is_zccl_target("zccl_transports::tcp"));
        assert!(!is_zccl_target("zcclx") && !is_zccl_target("app"));
    }

    #[test]
    fn enabled_rules() {
        let s = settings(&[("ZCCL_DEBUG", "INFO"), ("ZCCL_DEBUG_SUBSYS", "NET")]).unwrap();
        for (level, target, want) in [
            (Level::INFO, NET, true),
            (Level::INFO, "zccl_transports::tcp", true),
            (Level::INFO, INIT, false),
            (Level::DEBUG, NET, false),
            (Level::WARN, INIT, true),
            (Level::ERROR, P2P, true),
            (Level::ERROR, "my_app", false),
        ] {
            assert_eq!(s.enabled(&level, target), want, "{level} {target}");
        }
        let quiet = settings(&[("ZCCL_DEBUG", "VERSION")]).unwrap();
        assert!(!quiet.enabled(&Level::ERROR, INIT));
        let errors = settings(&[("ZCCL_DEBUG", "ERROR")]).unwrap();
        assert!(errors.enabled(&Level::ERROR, NET) && !errors.enabled(&Level::WARN, NET));
        let trace = settings(&[("ZCCL_DEBUG", "TRACE"), ("ZCCL_DEBUG_SUBSYS", "ALL")]).unwrap();
        assert!(trace.enabled(&Level::TRACE, "zccl_runtime::mystery"));
    }

    #[test]
    fn file_names() {
        for (t, want) in [
            ("/tmp/zccl.%h.%p.log", "/tmp/zccl.node1.77.log"),
            ("plain", "plain"),
            ("%%h", "%h"),
            ("end%", "end%"),
            ("%q%h", "%qnode1"),
        ] {
            assert_eq!(expand_file_name(t, "node1", 77), want, "{t}");
        }
        assert!(!short_hostname().is_empty() && !short_hostname().contains('.'));
    }
}
