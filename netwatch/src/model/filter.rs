//! The `ss` filter language for TCP sockets, as netwatch's trailing arguments.
//!
//! Why this exists: the engineer on call already types `ss` filters (`state close-wait`,
//! `dport = :443`, `dst 10.0.0.0/8`). netwatch takes the same words, so nothing new has to be
//! learned, and it rejects a bad expression before anything is attached to the kernel, naming
//! the word and the column where it went wrong.
//!
//! The module is pure and depends on nothing else in netwatch: a caller implements
//! [`Subject`] for its event type, parses with [`parse_args`] (argv words) or `str::parse`,
//! and evaluates with [`Expr::matches`]. [`Expr::required_ports`] says what a kernel-side
//! pre-filter may safely drop.
//!
//! Grammar and semantics follow iproute2's `ssfilter.y`, `ss.c` and `man 8 ss`, with these
//! deliberate differences:
//! - Precedence is `not` over `and` over `or`, as `man ss` documents. (ss's own yacc grammar
//!   folds `and` and `or` left to right at one level, so there `a or b and c` means
//!   `(a or b) and c`; with parentheses both readings agree.)
//! - `state`/`exclude` clauses may stand anywhere a predicate may, not only first. A run of
//!   adjacent clauses builds one set exactly as ss's leading state filter does
//!   (`state a state b` is a *or* b; a first `exclude` starts from all states).
//! - Service names (`:ssh`, `:https`) come from a built-in table, so a filter means the same
//!   on every host and parsing reads no file; host names are not resolved.
//! - `dev`, `fwmark`, `cgroup`, `autobound` and family prefixes (`inet6:`) are rejected with
//!   a message: netwatch's events do not carry what they test. A wildcard port after
//!   `sport`/`dport` (`:*`, a tautology) is rejected too.
//! - `(` and `)` need no surrounding spaces; `src`/`dst` also take `!=`; an unbracketed IPv6
//!   address is accepted when it cannot also be read as ADDRESS:PORT.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

/// A TCP state, numbered as the kernel numbers it (`include/net/tcp_states.h`), so a caller
/// holding a raw state byte converts with [`TcpStateName::from_kernel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpStateName {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    /// A request socket (the server half of a handshake). The kernel's socket dumps report
    /// it as SYN-RECV, and so does every filter here: it matches wherever `syn-recv` does.
    NewSynRecv = 12,
}

impl TcpStateName {
    /// The eleven states a filter can name, in kernel order (no `NewSynRecv`: see there).
    pub const FILTERABLE: [TcpStateName; 11] = [
        TcpStateName::Established,
        TcpStateName::SynSent,
        TcpStateName::SynRecv,
        TcpStateName::FinWait1,
        TcpStateName::FinWait2,
        TcpStateName::TimeWait,
        TcpStateName::Close,
        TcpStateName::CloseWait,
        TcpStateName::LastAck,
        TcpStateName::Listen,
        TcpStateName::Closing,
    ];

    /// The state the kernel numbers `n`; `None` for 0 or a number this build does not know.
    pub fn from_kernel(n: u8) -> Option<Self> {
        use TcpStateName::*;
        Some(match n {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }

    /// The kernel's number for this state.
    pub const fn kernel_number(self) -> u8 {
        self as u8
    }

    /// The name a filter uses for this state (ss's spelling: `closed`, `listening`).
    pub fn filter_name(self) -> &'static str {
        use TcpStateName::*;
        match self {
            Established => "established",
            SynSent => "syn-sent",
            SynRecv | NewSynRecv => "syn-recv",
            FinWait1 => "fin-wait-1",
            FinWait2 => "fin-wait-2",
            TimeWait => "time-wait",
            Close => "closed",
            CloseWait => "close-wait",
            LastAck => "last-ack",
            Listen => "listening",
            Closing => "closing",
        }
    }

    /// This state's bit in a [`StateSet`]; a request socket counts as SYN-RECV.
    const fn bit(self) -> u16 {
        match self {
            TcpStateName::NewSynRecv => TcpStateName::SynRecv.bit(),
            s => 1 << s.kernel_number(),
        }
    }
}

/// A set of TCP states: what one `state`/`exclude` run selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateSet(u16);

const fn state_bits(states: &[TcpStateName]) -> u16 {
    let mut bits = 0;
    let mut i = 0;
    while i < states.len() {
        bits |= states[i].bit();
        i += 1;
    }
    bits
}

const ALL_BITS: u16 = state_bits(&TcpStateName::FILTERABLE);
const CONNECTED_BITS: u16 = ALL_BITS & !state_bits(&[TcpStateName::Close, TcpStateName::Listen]);
const SYNCHRONIZED_BITS: u16 = CONNECTED_BITS & !state_bits(&[TcpStateName::SynSent]);
const BUCKET_BITS: u16 = state_bits(&[TcpStateName::SynRecv, TcpStateName::TimeWait]);
const BIG_BITS: u16 = ALL_BITS & !BUCKET_BITS;

/// ss's state groups (`scan_state()` in ss.c), in the order the printer prefers them.
const STATE_GROUPS: [(&str, StateSet); 5] = [
    ("all", StateSet(ALL_BITS)),
    ("connected", StateSet(CONNECTED_BITS)),
    ("synchronized", StateSet(SYNCHRONIZED_BITS)),
    ("bucket", StateSet(BUCKET_BITS)),
    ("big", StateSet(BIG_BITS)),
];

/// Extra spellings ss accepts (`close`, `syn-rcv`, its list name `unconnected`), plus
/// `listen`, the name netwatch's own output uses for LISTEN.
const STATE_ALIASES: [(&str, TcpStateName); 4] = [
    ("close", TcpStateName::Close),
    ("unconnected", TcpStateName::Close),
    ("syn-rcv", TcpStateName::SynRecv),
    ("listen", TcpStateName::Listen),
];

impl StateSet {
    /// No state: matches nothing.
    pub const EMPTY: StateSet = StateSet(0);
    /// Every state (ss's `all`).
    pub const ALL: StateSet = StateSet(ALL_BITS);

    /// The set holding exactly `states`.
    pub fn of(states: &[TcpStateName]) -> StateSet {
        StateSet(state_bits(states))
    }

    /// Whether `state` is in the set (a request socket counts as SYN-RECV).
    pub fn contains(self, state: TcpStateName) -> bool {
        self.0 & state.bit() != 0
    }

    pub fn union(self, other: StateSet) -> StateSet {
        StateSet(self.0 | other.0)
    }

    pub fn intersection(self, other: StateSet) -> StateSet {
        StateSet(self.0 & other.0)
    }

    /// Every state not in the set.
    pub fn complement(self) -> StateSet {
        StateSet(ALL_BITS & !self.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The members, in kernel order.
    pub fn iter(self) -> impl Iterator<Item = TcpStateName> {
        TcpStateName::FILTERABLE
            .into_iter()
            .filter(move |s| self.contains(*s))
    }
}

/// Which end of the socket a term tests. As in ss, `src`/`sport` is the local end and
/// `dst`/`dport` the remote end, whoever opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    fn addr_word(self) -> &'static str {
        match self {
            Side::Src => "src",
            Side::Dst => "dst",
        }
    }

    fn port_word(self) -> &'static str {
        match self {
            Side::Src => "sport",
            Side::Dst => "dport",
        }
    }
}

/// A port comparison: `socket port OP filter port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The canonical (symbolic) spelling.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// Whether `value OP rhs` holds.
    pub fn test(self, value: u16, rhs: u16) -> bool {
        match self {
            CmpOp::Eq => value == rhs,
            CmpOp::Ne => value != rhs,
            CmpOp::Lt => value < rhs,
            CmpOp::Le => value <= rhs,
            CmpOp::Gt => value > rhs,
            CmpOp::Ge => value >= rhs,
        }
    }

    /// The operator that holds exactly when this one does not.
    fn negate(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Ne,
            CmpOp::Ne => CmpOp::Eq,
            CmpOp::Lt => CmpOp::Ge,
            CmpOp::Ge => CmpOp::Lt,
            CmpOp::Le => CmpOp::Gt,
            CmpOp::Gt => CmpOp::Le,
        }
    }
}

/// An address with a prefix length: a single host when the prefix is the full length.
/// Host bits are cleared on construction, so `10.0.0.1/8` and `10.0.0.0/8` are one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network of `addr` with `prefix` leading bits; `None` when the prefix is longer
    /// than the address (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let addr = match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return None;
                }
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_u32(prefix)))
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return None;
                }
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_u128(prefix)))
            }
        };
        Some(IpNet { addr, prefix })
    }

    /// The single host `addr`.
    pub fn host(addr: IpAddr) -> IpNet {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the network. As in ss, an IPv4 network also matches IPv4-mapped
    /// IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4 peer),
    /// while an IPv6 network matches IPv6 addresses only.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask_u32(self.prefix) == u32::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a4| self.contains(IpAddr::V4(a4))),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask_u128(self.prefix) == u128::from(net)
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }

    fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr())
        } else {
            write!(f, "{}/{}", self.addr(), self.prefix())
        }
    }
}

/// A parsed filter expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// The socket's state is in the set.
    State(StateSet),
    /// `sport`/`dport OP PORT`.
    Port {
        side: Side,
        op: CmpOp,
        port: u16,
    },
    /// `src`/`dst HOST`: the address is in `net` (any address when `None`, written `*`) and
    /// the port equals `port` (any port when `None`).
    Addr {
        side: Side,
        net: Option<IpNet>,
        port: Option<u16>,
    },
}

/// What a filter needs to know about one socket event; netwatch's `Event` implements it.
pub trait Subject {
    /// The socket's state; `None` when unknown. An unknown state is in no set, so `state ...`
    /// terms are false for it (and `not state ...` true): a filter never invents a state.
    fn state(&self) -> Option<TcpStateName>;
    /// Local address and port (`src`, `sport`).
    fn local(&self) -> (IpAddr, u16);
    /// Remote address and port (`dst`, `dport`).
    fn remote(&self) -> (IpAddr, u16);
}

fn endpoint(s: &impl Subject, side: Side) -> (IpAddr, u16) {
    match side {
        Side::Src => s.local(),
        Side::Dst => s.remote(),
    }
}

impl Expr {
    /// Whether the expression holds for `s`.
    pub fn matches(&self, s: &impl Subject) -> bool {
        match self {
            Expr::And(a, b) => a.matches(s) && b.matches(s),
            Expr::Or(a, b) => a.matches(s) || b.matches(s),
            Expr::Not(a) => !a.matches(s),
            Expr::State(set) => s.state().is_some_and(|st| set.contains(st)),
            Expr::Port { side, op, port } => op.test(endpoint(s, *side).1, *port),
            Expr::Addr { side, net, port } => {
                let (ip, p) = endpoint(s, *side);
                net.is_none_or(|n| n.contains(ip)) && port.is_none_or(|q| q == p)
            }
        }
    }

    /// What a kernel-side pre-filter may decide by port: `Some(ranges)` when every socket the
    /// expression matches has its `side` port in one of the (sorted, disjoint) inclusive
    /// ranges, `None` when the expression does not constrain that port. `dport != :22` gives
    /// `0..=21, 23..=65535`; `dst 10.0.0.1:80` gives `80..=80`; `not dst 10.0.0.1:80` gives
    /// `None` (another address on port 80 also matches).
    pub fn required_ports(&self, side: Side) -> Option<Vec<RangeInclusive<u16>>> {
        self.port_bound(side, true)
            .map(|set| set.0.into_iter().map(|(lo, hi)| lo..=hi).collect())
    }

    /// The port bound on `side` of `self` (when `positive`) or of `not self`.
    fn port_bound(&self, side: Side, positive: bool) -> Option<PortSet> {
        match (self, positive) {
            (Expr::Not(e), p) => e.port_bound(side, !p),
            (Expr::And(a, b), true) | (Expr::Or(a, b), false) => {
                match (a.port_bound(side, positive), b.port_bound(side, positive)) {
                    (Some(x), Some(y)) => Some(x.intersection(&y)),
                    (x, None) | (None, x) => x,
                }
            }
            (Expr::Or(a, b), true) | (Expr::And(a, b), false) => {
                match (a.port_bound(side, positive), b.port_bound(side, positive)) {
                    (Some(x), Some(y)) => Some(x.union(&y)),
                    _ => None,
                }
            }
            (Expr::Port { side: s, op, port }, p) if *s == side => {
                Some(PortSet::from_op(if p { *op } else { op.negate() }, *port))
            }
            (
                Expr::Addr {
                    side: s,
                    port: Some(q),
                    ..
                },
                true,
            ) if *s == side => Some(PortSet(vec![(*q, *q)])),
            _ => None,
        }
    }
}

/// Sorted, disjoint, non-adjacent inclusive port ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    fn from_op(op: CmpOp, p: u16) -> PortSet {
        let ranges = match op {
            CmpOp::Eq => vec![(p, p)],
            CmpOp::Ne => {
                let mut v = Vec::new();
                if let Some(below) = p.checked_sub(1) {
                    v.push((0, below));
                }
                if let Some(above) = p.checked_add(1) {
                    v.push((above, u16::MAX));
                }
                v
            }
            CmpOp::Lt => p.checked_sub(1).map(|hi| (0, hi)).into_iter().collect(),
            CmpOp::Le => vec![(0, p)],
            CmpOp::Gt => p
                .checked_add(1)
                .map(|lo| (lo, u16::MAX))
                .into_iter()
                .collect(),
            CmpOp::Ge => vec![(p, u16::MAX)],
        };
        PortSet(ranges)
    }

    fn intersection(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for &(a_lo, a_hi) in &self.0 {
            for &(b_lo, b_hi) in &other.0 {
                let (lo, hi) = (a_lo.max(b_lo), a_hi.min(b_hi));
                if lo <= hi {
                    out.push((lo, hi));
                }
            }
        }
        PortSet::normalized(out)
    }

    fn union(&self, other: &PortSet) -> PortSet {
        PortSet::normalized(self.0.iter().chain(&other.0).copied().collect())
    }

    fn normalized(mut ranges: Vec<(u16, u16)>) -> PortSet {
        ranges.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        PortSet(out)
    }
}

// ---------------------------------------------------------------------------------------
// Printing: the canonical text. Explicit `and`/`or` everywhere (so two state terms never
// merge into one run), parentheses only where precedence needs them, numbers for ports,
// brackets around every IPv6 address.

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, PREC_OR)
    }
}

const PREC_OR: u8 = 0;
const PREC_AND: u8 = 1;
const PREC_UNARY: u8 = 2;

impl Expr {
    fn write(&self, f: &mut fmt::Formatter<'_>, ctx: u8) -> fmt::Result {
        let own = match self {
            Expr::Or(..) => PREC_OR,
            Expr::And(..) => PREC_AND,
            _ => PREC_UNARY,
        };
        if own < ctx {
            f.write_str("( ")?;
            self.write(f, PREC_OR)?;
            return f.write_str(" )");
        }
        match self {
            Expr::Or(a, b) => {
                a.write(f, PREC_OR)?;
                f.write_str(" or ")?;
                b.write(f, PREC_AND)
            }
            Expr::And(a, b) => {
                a.write(f, PREC_AND)?;
                f.write_str(" and ")?;
                b.write(f, PREC_UNARY)
            }
            Expr::Not(a) => {
                f.write_str("not ")?;
                a.write(f, PREC_UNARY)
            }
            Expr::State(set) => write_states(f, *set),
            Expr::Port { side, op, port } => {
                write!(f, "{} {} :{port}", side.port_word(), op.symbol())
            }
            Expr::Addr { side, net, port } => {
                write!(f, "{} ", side.addr_word())?;
                match net {
                    None => f.write_str("*")?,
                    Some(n) if n.addr.is_ipv6() => write!(f, "[{n}]")?,
                    Some(n) => write!(f, "{n}")?,
                }
                match port {
                    Some(p) => write!(f, ":{p}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A group name when the set is one, else the shorter of `state ...` and `exclude ...`.
fn write_states(f: &mut fmt::Formatter<'_>, set: StateSet) -> fmt::Result {
    if let Some((name, _)) = STATE_GROUPS.iter().find(|(_, g)| *g == set) {
        return write!(f, "state {name}");
    }
    if set.is_empty() {
        return f.write_str("exclude all");
    }
    let (word, members) = if set.len() <= 6 {
        ("state", set)
    } else {
        ("exclude", set.complement())
    };
    for (i, s) in members.iter().enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        write!(f, "{word} {}", s.filter_name())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parsing.

/// A filter that does not parse: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct FilterError {
    /// What is wrong, naming the word (and a hint in parentheses when there is one).
    pub message: String,
    /// 1-based character column in the expression (for [`parse_args`], in the words joined
    /// with single spaces); one past the end when the expression stopped too early.
    pub column: usize,
    /// The offending word; empty when the expression stopped too early.
    pub token: String,
}

fn error(message: impl Into<String>, column: usize, token: &str) -> FilterError {
    FilterError {
        message: message.into(),
        column,
        token: token.to_string(),
    }
}

/// Parses the trailing arguments of a netwatch command: `None` when there are none (no
/// filter), the expression otherwise. The words are joined with single spaces first, so a
/// filter may arrive as separate words or quoted as one (`'( dport = :5432 )'`), and error
/// columns count in that joined text.
pub fn parse_args(words: &[String]) -> Result<Option<Expr>, FilterError> {
    Parser::new(&words.join(" ")).parse_all()
}

impl FromStr for Expr {
    type Err = FilterError;

    /// Parses a whole expression; an empty or blank string is an error.
    fn from_str(s: &str) -> Result<Expr, FilterError> {
        Parser::new(s)
            .parse_all()?
            .ok_or_else(|| error("empty filter expression", 1, ""))
    }
}

#[derive(Clone, Copy, Debug)]
struct Tok<'a> {
    text: &'a str,
    /// 1-based character column of the first character.
    col: usize,
}

/// Splits at whitespace; `(` and `)` are words of their own even when glued to others.
fn tokenize(input: &str) -> Vec<Tok<'_>> {
    let mut toks = Vec::new();
    let mut start: Option<(usize, usize)> = None;
    for (index, (byte, c)) in input.char_indices().enumerate() {
        let col = index + 1;
        if c.is_whitespace() || c == '(' || c == ')' {
            if let Some((b, sc)) = start.take() {
                toks.push(Tok {
                    text: &input[b..byte],
                    col: sc,
                });
            }
            if c == '(' || c == ')' {
                toks.push(Tok {
                    text: &input[byte..byte + 1],
                    col,
                });
            }
        } else if start.is_none() {
            start = Some((byte, col));
        }
    }
    if let Some((b, sc)) = start {
        toks.push(Tok {
            text: &input[b..],
            col: sc,
        });
    }
    toks
}

fn is_not(w: &str) -> bool {
    matches!(w, "not" | "!")
}

fn is_and(w: &str) -> bool {
    matches!(w, "and" | "&&" | "&")
}

fn is_or(w: &str) -> bool {
    matches!(w, "or" | "||" | "|")
}

fn is_state_word(w: &str) -> bool {
    matches!(w, "state" | "exclude" | "excl")
}

/// The comparison operators and their word aliases (`man ss`, and `yylex()` in ssfilter.y).
fn op_word(w: &str) -> Option<CmpOp> {
    Some(match w {
        "=" | "==" | "eq" => CmpOp::Eq,
        "!=" | "ne" | "neq" => CmpOp::Ne,
        "<" | "lt" => CmpOp::Lt,
        "<=" | "le" | "leq" => CmpOp::Le,
        ">" | "gt" => CmpOp::Gt,
        ">=" | "ge" | "geq" => CmpOp::Ge,
        _ => return None,
    })
}

/// Operator characters that spell no operator (`=>`, `<>`): reported as such rather than
/// as a bad port or address.
fn looks_like_op(w: &str) -> bool {
    !w.is_empty()
        && w.chars().all(|c| matches!(c, '<' | '>' | '=' | '!'))
        && op_word(w).is_none()
        && !is_not(w)
}

/// ss predicates netwatch cannot evaluate: its events carry no device, mark or cgroup.
fn is_unsupported_predicate(w: &str) -> bool {
    matches!(w, "dev" | "fwmark" | "cgroup" | "autobound")
}

/// Words with a grammatical role: never a state, port or address.
fn is_reserved(w: &str) -> bool {
    matches!(
        w,
        "(" | ")"
            | "sport"
            | "dport"
            | "src"
            | "dst"
            | "!"
            | "not"
            | "and"
            | "&&"
            | "&"
            | "or"
            | "||"
            | "|"
    ) || is_state_word(w)
        || is_unsupported_predicate(w)
        || op_word(w).is_some()
}

/// The words that can start a predicate, for "did you mean" hints.
const KEYWORDS: [&str; 9] = [
    "state", "exclude", "sport", "dport", "src", "dst", "not", "and", "or",
];

const EXPECTED_TERM: &str = "expected state, sport, dport, src, dst, not, '('";

struct Parser<'a> {
    toks: Vec<Tok<'a>>,
    pos: usize,
    /// The column just past the last non-blank character: where "ended too early" points.
    end: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Parser<'a> {
        Parser {
            toks: tokenize(input),
            pos: 0,
            end: input.trim_end().chars().count() + 1,
        }
    }

    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.pos).copied()
    }

    fn parse_all(mut self) -> Result<Option<Expr>, FilterError> {
        if self.toks.is_empty() {
            return Ok(None);
        }
        let expr = self.parse_or(None)?;
        match self.peek() {
            None => Ok(Some(expr)),
            // parse_or stops only at `)` or the end, so this is a `)` without its `(`.
            Some(t) => Err(error(format!("unexpected '{}'", t.text), t.col, t.text)),
        }
    }

    /// `after` is the word before this expression, for "expected an expression after".
    fn parse_or(&mut self, after: Option<Tok<'a>>) -> Result<Expr, FilterError> {
        let mut lhs = self.parse_and(after)?;
        while let Some(t) = self.peek()
            && is_or(t.text)
        {
            self.pos += 1;
            let rhs = self.parse_and(Some(t))?;
            lhs = Expr::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn parse_and(&mut self, after: Option<Tok<'a>>) -> Result<Expr, FilterError> {
        let mut lhs = self.parse_unary(after)?;
        while let Some(t) = self.peek() {
            let rhs = if is_and(t.text) {
                self.pos += 1;
                self.parse_unary(Some(t))?
            } else if t.text == ")" || is_or(t.text) {
                break;
            } else {
                // Adjacent terms: ss's implicit `and`.
                self.parse_unary(None)?
            };
            lhs = Expr::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn parse_unary(&mut self, after: Option<Tok<'a>>) -> Result<Expr, FilterError> {
        match self.peek() {
            Some(t) if is_not(t.text) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.parse_unary(Some(t))?)))
            }
            _ => self.parse_primary(after),
        }
    }

    fn expected_expression(&self, after: Option<Tok<'a>>, found: Option<Tok<'a>>) -> FilterError {
        let (column, token) = found.map_or((self.end, ""), |t| (t.col, t.text));
        match after {
            Some(a) => error(
                format!("expected an expression after '{}'", a.text),
                column,
                token,
            ),
            None => error("expected an expression", column, token),
        }
    }

    fn parse_primary(&mut self, after: Option<Tok<'a>>) -> Result<Expr, FilterError> {
        let Some(t) = self.peek() else {
            return Err(self.expected_expression(after, None));
        };
        match t.text {
            "(" => {
                self.pos += 1;
                let inner = self.parse_or(Some(t))?;
                match self.peek() {
                    Some(close) if close.text == ")" => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(error("unbalanced '('", t.col, t.text)),
                }
            }
            ")" if after.is_none() => Err(error("unexpected ')'", t.col, t.text)),
            w if w == ")" || is_and(w) || is_or(w) => match after {
                Some(_) => Err(self.expected_expression(after, Some(t))),
                None => Err(error(
                    format!("expected an expression before '{w}'"),
                    t.col,
                    w,
                )),
            },
            w if is_state_word(w) => self.parse_states(),
            "sport" => self.parse_port(t, Side::Src),
            "dport" => self.parse_port(t, Side::Dst),
            "src" => self.parse_host(t, Side::Src),
            "dst" => self.parse_host(t, Side::Dst),
            w if is_unsupported_predicate(w) => Err(error(
                format!(
                    "'{w}' is not supported by netwatch (it filters on state, ports and addresses)"
                ),
                t.col,
                w,
            )),
            _ => Err(unknown_word(t)),
        }
    }

    /// One run of `state S` / `exclude S` clauses, combined as ss combines its leading ones.
    fn parse_states(&mut self) -> Result<Expr, FilterError> {
        let mut set: Option<StateSet> = None;
        while let Some(kw) = self.peek()
            && is_state_word(kw.text)
        {
            self.pos += 1;
            let expected = format!("expected a state name after '{}'", kw.text);
            let Some(name) = self.peek() else {
                return Err(error(expected, self.end, ""));
            };
            if is_reserved(name.text) {
                return Err(error(expected, name.col, name.text));
            }
            self.pos += 1;
            let states = lookup_state(name.text).ok_or_else(|| unknown_state(name))?;
            set = Some(if kw.text == "state" {
                set.unwrap_or(StateSet::EMPTY).union(states)
            } else {
                set.unwrap_or(StateSet::ALL)
                    .intersection(states.complement())
            });
        }
        Ok(Expr::State(set.unwrap_or(StateSet::EMPTY)))
    }

    /// An optional comparison operator after `kw`; `Err` for operator-like junk.
    fn parse_op(
        &mut self,
        kw: Tok<'a>,
        expected: &str,
    ) -> Result<Option<(CmpOp, Tok<'a>)>, FilterError> {
        match self.peek() {
            Some(t) => {
                if let Some(op) = op_word(t.text) {
                    self.pos += 1;
                    Ok(Some((op, t)))
                } else if looks_like_op(t.text) {
                    Err(error(
                        format!(
                            "unknown operator '{}' after '{}' (expected {expected})",
                            t.text, kw.text
                        ),
                        t.col,
                        t.text,
                    ))
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }

    fn parse_port(&mut self, kw: Tok<'a>, side: Side) -> Result<Expr, FilterError> {
        self.pos += 1;
        let (op, context) = match self.parse_op(kw, "=, !=, <, <=, >, >=")? {
            Some((op, t)) => (op, format!("{} {}", kw.text, t.text)),
            None => (CmpOp::Eq, kw.text.to_string()),
        };
        let expected = format!("expected ':PORT' after '{context}'");
        let Some(t) = self.peek() else {
            return Err(error(expected, self.end, ""));
        };
        self.pos += 1;
        let port = port_spec(t.text, &expected).map_err(|m| error(m, t.col, t.text))?;
        Ok(Expr::Port { side, op, port })
    }

    fn parse_host(&mut self, kw: Tok<'a>, side: Side) -> Result<Expr, FilterError> {
        self.pos += 1;
        let mut negate = false;
        let mut context = kw.text.to_string();
        if let Some((op, t)) = self.parse_op(kw, "= or !=")? {
            match op {
                CmpOp::Eq => {}
                CmpOp::Ne => negate = true,
                _ => {
                    return Err(error(
                        format!(
                            "operator '{}' does not apply to '{}' (use = or !=)",
                            t.text, kw.text
                        ),
                        t.col,
                        t.text,
                    ));
                }
            }
            context = format!("{} {}", kw.text, t.text);
        }
        let expected = format!("expected ADDRESS[/PREFIX][:PORT] after '{context}'");
        let Some(t) = self.peek() else {
            return Err(error(expected, self.end, ""));
        };
        if is_reserved(t.text) {
            return Err(error(expected, t.col, t.text));
        }
        self.pos += 1;
        let (net, port) = host_spec(t.text, &expected).map_err(|m| error(m, t.col, t.text))?;
        let term = Expr::Addr { side, net, port };
        Ok(if negate {
            Expr::Not(Box::new(term))
        } else {
            term
        })
    }
}

/// The set a state word names (case-insensitive, as ss's `strcasecmp`), or `None`.
fn lookup_state(word: &str) -> Option<StateSet> {
    let w = word.to_ascii_lowercase();
    if let Some((_, set)) = STATE_GROUPS.iter().find(|(name, _)| *name == w) {
        return Some(*set);
    }
    if let Some(s) = TcpStateName::FILTERABLE
        .iter()
        .find(|s| s.filter_name() == w)
    {
        return Some(StateSet::of(&[*s]));
    }
    STATE_ALIASES
        .iter()
        .find(|(name, _)| *name == w)
        .map(|(_, s)| StateSet::of(&[*s]))
}

/// Every state and group name a filter may use, for hints.
fn state_names() -> impl Iterator<Item = &'static str> {
    TcpStateName::FILTERABLE
        .iter()
        .map(|s| s.filter_name())
        .chain(STATE_GROUPS.iter().map(|(name, _)| *name))
}

fn unknown_state(t: Tok<'_>) -> FilterError {
    let normalized = t.text.to_ascii_lowercase().replace('_', "-");
    let names: Vec<&str> = state_names().collect();
    let suggestion = if lookup_state(&normalized).is_some() {
        Some(normalized)
    } else {
        closest(&normalized, &names).map(str::to_string)
    };
    let message = match suggestion {
        Some(s) => format!("unknown state '{}' (did you mean {s}?)", t.text),
        None => format!(
            "unknown state '{}' (expected one of {}, or a group: {})",
            t.text,
            TcpStateName::FILTERABLE.map(|s| s.filter_name()).join(", "),
            STATE_GROUPS.map(|(name, _)| name).join(", "),
        ),
    };
    error(message, t.col, t.text)
}

fn unknown_word(t: Tok<'_>) -> FilterError {
    let w = t.text;
    let message = if lookup_state(w).is_some() {
        format!("unknown word '{w}' (did you mean 'state {w}'?)")
    } else if let Some(spaced) = glued_operator(w) {
        format!("unknown word '{w}' (write '{spaced}', with spaces)")
    } else if let Some(k) = closest(&w.to_ascii_lowercase(), &KEYWORDS) {
        format!("unknown word '{w}' (did you mean {k}?)")
    } else if looks_like_op(w) || op_word(w).is_some() || is_not(w) {
        format!("unexpected '{w}' ({EXPECTED_TERM})")
    } else {
        format!("unknown word '{w}' ({EXPECTED_TERM})")
    };
    error(message, t.col, w)
}

/// `dport=:80` → `dport = :80`: a keyword glued to an operator (ss needs spaces too).
fn glued_operator(w: &str) -> Option<String> {
    let keyword = ["sport", "dport", "src", "dst"]
        .into_iter()
        .find(|k| w.starts_with(k))?;
    let rest = &w[keyword.len()..];
    let op_len = rest
        .find(|c: char| !matches!(c, '<' | '>' | '=' | '!'))
        .unwrap_or(rest.len());
    let (op, value) = rest.split_at(op_len);
    if op.is_empty() {
        return None;
    }
    Some(if value.is_empty() {
        format!("{keyword} {op} ...")
    } else {
        format!("{keyword} {op} {value}")
    })
}

/// The name nearest to `word` by edit distance, if it is near enough to be a typo.
/// The name nearest to `word` by edit distance (at most 1 for short words, 2 otherwise).
pub fn closest<'n>(word: &str, names: &[&'n str]) -> Option<&'n str> {
    let limit = if word.chars().count() <= 3 { 1 } else { 2 };
    names
        .iter()
        .map(|n| (edit_distance(word, n), *n))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Well-known TCP services: the common entries of Debian's `/etc/services`, names and
/// aliases. Built in, so a filter means the same on every host and parsing reads no file.
const SERVICES: &[(&str, u16)] = &[
    ("ftp-data", 20),
    ("ftp", 21),
    ("ssh", 22),
    ("telnet", 23),
    ("smtp", 25),
    ("mail", 25),
    ("whois", 43),
    ("nicname", 43),
    ("domain", 53),
    ("gopher", 70),
    ("finger", 79),
    ("http", 80),
    ("www", 80),
    ("kerberos", 88),
    ("kerberos5", 88),
    ("krb5", 88),
    ("kerberos-sec", 88),
    ("pop3", 110),
    ("pop-3", 110),
    ("sunrpc", 111),
    ("portmapper", 111),
    ("nntp", 119),
    ("readnews", 119),
    ("untp", 119),
    ("imap2", 143),
    ("imap", 143),
    ("snmp", 161),
    ("bgp", 179),
    ("ldap", 389),
    ("https", 443),
    ("microsoft-ds", 445),
    ("submissions", 465),
    ("ssmtp", 465),
    ("smtps", 465),
    ("urd", 465),
    ("rtsp", 554),
    ("submission", 587),
    ("ldaps", 636),
    ("domain-s", 853),
    ("rsync", 873),
    ("imaps", 993),
    ("pop3s", 995),
    ("socks", 1080),
    ("openvpn", 1194),
    ("ms-sql-s", 1433),
    ("radius", 1812),
    ("nfs", 2049),
    ("iscsi-target", 3260),
    ("mysql", 3306),
    ("distcc", 3632),
    ("svn", 3690),
    ("subversion", 3690),
    ("sip", 5060),
    ("xmpp-client", 5222),
    ("jabber-client", 5222),
    ("postgresql", 5432),
    ("postgres", 5432),
    ("nrpe", 5666),
    ("amqp", 5672),
    ("x11", 6000),
    ("x11-0", 6000),
    ("redis", 6379),
    ("http-alt", 8080),
    ("webcache", 8080),
    ("git", 9418),
    ("zabbix-agent", 10050),
    ("hkp", 11371),
];

/// Why a word is not a port.
enum PortError {
    /// Not a number nor a name at all: the caller says what it expected.
    NotAPort,
    /// A number or name with a specific problem.
    Invalid(String),
}

/// A port number (decimal, 0-65535) or service name, without the leading `:`.
fn port_number(p: &str) -> Result<u16, PortError> {
    if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
        return p
            .parse::<u16>()
            .map_err(|_| PortError::Invalid(format!("port '{p}' is out of range (0-65535)")));
    }
    let name_like = p.starts_with(|c: char| c.is_ascii_alphabetic())
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !is_reserved(p);
    if !name_like {
        return Err(PortError::NotAPort);
    }
    SERVICES
        .iter()
        .find(|(name, _)| *name == p)
        .map(|(_, port)| *port)
        .ok_or_else(|| {
            PortError::Invalid(format!(
                "unknown service name '{p}' (use a port number, e.g. :8080)"
            ))
        })
}

/// ss's family prefixes (`[FAMILY:]` in `man ss`).
const FAMILY_PREFIXES: [&str; 6] = ["inet6:", "inet:", "unix:", "link:", "netlink:", "vsock:"];

fn family_prefix(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    FAMILY_PREFIXES.into_iter().find(|f| lower.starts_with(f))
}

fn family_message(prefix: &str) -> String {
    format!(
        "address family prefix '{prefix}' is not supported (netwatch traces TCP over IPv4 and \
         IPv6; use -4 or -6)"
    )
}

/// The PORT after `sport`/`dport [OP]`: `:80`, `80`, `:https`.
fn port_spec(text: &str, expected: &str) -> Result<u16, String> {
    if let Some(prefix) = family_prefix(text) {
        return Err(family_message(prefix));
    }
    let p = text.strip_prefix(':').unwrap_or(text);
    if p == "*" {
        return Err(format!(
            "wildcard port '{text}' matches every socket (leave the condition out)"
        ));
    }
    match port_number(p) {
        Ok(port) => Ok(port),
        Err(PortError::Invalid(m)) => Err(m),
        Err(PortError::NotAPort) => Err(expected.to_string()),
    }
}

/// The PORT part of a HOST: empty or `*` means any port (as in ss).
fn host_port(p: &str, text: &str) -> Result<Option<u16>, String> {
    if p.is_empty() || p == "*" {
        return Ok(None);
    }
    match port_number(p) {
        Ok(port) => Ok(Some(port)),
        Err(PortError::Invalid(m)) => Err(m),
        Err(PortError::NotAPort) => Err(format!("invalid port '{p}' in '{text}'")),
    }
}

/// A HOST after `src`/`dst`: `ADDR`, `ADDR/LEN`, `ADDR:PORT`, `ADDR/LEN:PORT`, the bracketed
/// IPv6 forms `[ADDR]`, `[ADDR/LEN]:PORT` (also `[ADDR]/LEN:PORT`), `*`, `*:PORT`, `:PORT`.
fn host_spec(text: &str, expected: &str) -> Result<(Option<IpNet>, Option<u16>), String> {
    if let Some(prefix) = family_prefix(text) {
        return Err(family_message(prefix));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!("missing ']' in '{text}'"));
        };
        let (addr, mut len) = match inner.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (inner, None),
        };
        let mut port = None;
        if let Some(tail) = after.strip_prefix('/') {
            if len.is_some() {
                return Err(format!("two prefix lengths in '{text}'"));
            }
            match tail.split_once(':') {
                Some((l, p)) => {
                    len = Some(l);
                    port = Some(p);
                }
                None => len = Some(tail),
            }
        } else if let Some(p) = after.strip_prefix(':') {
            port = Some(p);
        } else if !after.is_empty() {
            return Err(format!("unexpected '{after}' after ']' in '{text}'"));
        }
        return host_parts(text, addr, len, port);
    }
    if let Some(rest) = text.strip_prefix('*') {
        return match rest.strip_prefix(':') {
            Some(p) => Ok((None, host_port(p, text)?)),
            None if rest.is_empty() => Ok((None, None)),
            None => Err(expected.to_string()),
        };
    }
    if let Some(p) = text.strip_prefix(':')
        && !p.starts_with(':')
    {
        return Ok((None, host_port(p, text)?));
    }
    if let Some((addr, tail)) = text.split_once('/') {
        // As in ss, a port after a prefix is found after the slash: `10.0.0.0/8:80`.
        return match tail.split_once(':') {
            Some((len, p)) => host_parts(text, addr, Some(len), Some(p)),
            None => host_parts(text, addr, Some(tail), None),
        };
    }
    if text.matches(':').count() >= 2 {
        return unbracketed_ipv6(text);
    }
    match text.split_once(':') {
        Some((addr, p)) => host_parts(text, addr, None, Some(p)),
        None => host_parts(text, text, None, None),
    }
}

/// `fd00::1` without brackets. ss splits at the last `:` for a port (so to it `fd00::1`
/// is `fd00:` port 1, an error); netwatch takes the whole word as the address when that
/// split does not give an address and a port, and refuses to guess when both readings work.
fn unbracketed_ipv6(text: &str) -> Result<(Option<IpNet>, Option<u16>), String> {
    let whole = text.parse::<Ipv6Addr>().ok();
    let split = text
        .rsplit_once(':')
        .and_then(|(a, p)| a.parse::<Ipv6Addr>().ok().map(|addr| (a, addr, p)));
    match (whole, split) {
        (Some(w), None) => Ok((Some(IpNet::host(IpAddr::V6(w))), None)),
        (None, Some((_, addr, p))) => {
            Ok((Some(IpNet::host(IpAddr::V6(addr))), host_port(p, text)?))
        }
        (Some(w), Some((a, _, p))) => match host_port(p, text) {
            Ok(_) => Err(format!(
                "ambiguous IPv6 address '{text}' (write '[{text}]' for the address, or \
                 '[{a}]:{p}' for address and port)"
            )),
            Err(_) => Ok((Some(IpNet::host(IpAddr::V6(w))), None)),
        },
        (None, None) => Err(format!("invalid address '{text}'")),
    }
}

fn host_parts(
    text: &str,
    addr: &str,
    len: Option<&str>,
    port: Option<&str>,
) -> Result<(Option<IpNet>, Option<u16>), String> {
    let ip = parse_address(addr, len.is_some())?;
    let net = match len {
        None => IpNet::host(ip),
        Some(l) => {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            let bad = || format!("invalid prefix length '/{l}' for {family}");
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let prefix = l.parse::<u8>().map_err(|_| bad())?;
            IpNet::new(ip, prefix).ok_or_else(bad)?
        }
    };
    let port = match port {
        Some(p) => host_port(p, text)?,
        None => None,
    };
    Ok((Some(net), port))
}

/// An IPv4 or IPv6 address. Like iproute2, a prefix may follow a shortened IPv4 network
/// (`193.233.7/24` is 193.233.7.0/24, from `man ss`); without a prefix that is refused,
/// since ss would read `10.1` as the single host 10.1.0.0, which nobody means.
fn parse_address(s: &str, has_prefix: bool) -> Result<IpAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    if s.is_empty() {
        return Err("expected an address before the prefix length".to_string());
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() <= 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        let octets: Option<Vec<u8>> = parts.iter().map(|p| p.parse::<u8>().ok()).collect();
        return match octets {
            Some(o) if o.len() < 4 && has_prefix => {
                let mut full = [0u8; 4];
                full[..o.len()].copy_from_slice(&o);
                Ok(IpAddr::V4(Ipv4Addr::from(full)))
            }
            Some(o) if o.len() < 4 => Err(format!(
                "incomplete IPv4 address '{s}' (add a prefix length, e.g. '{s}/{}')",
                8 * o.len()
            )),
            _ => Err(format!("invalid IPv4 address '{s}'")),
        };
    }
    if s.chars().any(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(format!(
            "host names are not resolved: '{s}' (use an IP address)"
        ));
    }
    Err(format!("invalid address '{s}'"))
}

/// `netwatch help filters`.
pub const HELP: &str = "\
FILTER EXPRESSIONS

netwatch takes the filter that `ss` takes for TCP sockets, as trailing arguments, and shows
an event when the expression holds for its socket. The words are joined with spaces and
read as one expression, so these mean the same:
    netwatch trace state time-wait '( dport = :5432 )'
    netwatch trace 'state time-wait ( dport = :5432 )'

GRAMMAR
    expr      := and-expr { OR and-expr }
    and-expr  := unary { [ AND ] unary }           two terms side by side mean AND
    unary     := NOT unary | primary
    primary   := ( expr ) | states | port-cond | host-cond
    states    := STATE-WORD name { STATE-WORD name }
    port-cond := ( sport | dport ) [ OP ] [:]PORT
    host-cond := ( src | dst ) [ = | != ] HOST

    OR    := or  | ||  | |          NOT := not | !
    AND   := and | &&  | &          STATE-WORD := state | exclude | excl
    OP    := = == eq    != ne neq    < lt    <= le leq    > gt    >= ge geq
             (no OP means =)
    PORT  := a number 0-65535 or a service name: ssh, http, https, postgresql, mysql,
             redis, ... (a built-in table of /etc/services names)
    HOST  := ADDRESS[/PREFIX][:PORT]       10.0.0.0/8  192.168.1.100:8080  193.233.7/24
           | [IPV6[/PREFIX]][:PORT]        [fd00::1]:443  [fd00::/64]  fd00::/64  fd00::1
           | *[:PORT]  |  :PORT            any address (on that port)

Precedence, loosest first: or, and, not (as `man ss` documents it); use parentheses to
group. ( and ) need no spaces around them. Shells treat ( ) < > ! & | specially: quote
them, or use the words (lt, gt, not, and, or).

TERMS
    sport, dport   the local (source) and the remote (destination) port of the socket
    src, dst       the local and the remote address. A prefix matches a network; a :PORT
                   also requires that port. An IPv4 address or network also matches
                   IPv4-mapped IPv6 sockets (::ffff:10.0.0.1); IPv6 must be bracketed
                   when followed by a port.
    state NAME     the socket's TCP state is NAME. Adjacent clauses form one set:
                   `state a state b` is a or b, `exclude c` removes c, and a first
                   `exclude` starts from all states. Events whose state netwatch does not
                   know never match `state` (and so do match `not state`).

STATES (case does not matter)
    established  syn-sent  syn-recv  fin-wait-1  fin-wait-2  time-wait  closed
    close-wait   last-ack  listening  closing
    (also accepted: listen, close, unconnected, syn-rcv)
  groups
    all           every state
    connected     all but listening and closed
    synchronized  connected but syn-sent
    bucket        syn-recv and time-wait (the states kept as minisockets)
    big           all but syn-recv and time-wait

EXAMPLES
    state close-wait                         sockets our side has not closed yet
    state established state time-wait        in either state
    state connected dport = :443
    dst 10.0.0.0/8 and not dport = :22
    state established '( dport = :ssh or sport = :ssh )'
    state fin-wait-1 '( sport = :http or sport = :https )' dst 193.233.7/24
    sport ge :1024 and not src 127.0.0.1
    dst [fd00::1]:443 or dst fd00::/64
    exclude listening exclude closed

ERRORS
A bad expression stops netwatch before anything is attached. The message names the word
and its column in the joined expression, counting from 1:
    $ netwatch trace dport = 80x
    error: expected ':PORT' after 'dport =' at column 9
    $ netwatch trace state close_wait
    error: unknown state 'close_wait' (did you mean close-wait?) at column 7

NOT SUPPORTED
dev, fwmark, cgroup and autobound (netwatch's events do not carry them), family prefixes
such as inet6: (use -4 or -6), and host names (write addresses).
";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use TcpStateName::*;

    // --- helpers to write expected trees by hand -------------------------------------

    fn and(a: Expr, b: Expr) -> Expr {
        Expr::And(Box::new(a), Box::new(b))
    }
    fn or(a: Expr, b: Expr) -> Expr {
        Expr::Or(Box::new(a), Box::new(b))
    }
    fn not(a: Expr) -> Expr {
        Expr::Not(Box::new(a))
    }
    fn states(s: &[TcpStateName]) -> Expr {
        Expr::State(StateSet::of(s))
    }
    fn port(side: Side, op: CmpOp, port: u16) -> Expr {
        Expr::Port { side, op, port }
    }
    fn sport(op: CmpOp, p: u16) -> Expr {
        port(Side::Src, op, p)
    }
    fn dport(op: CmpOp, p: u16) -> Expr {
        port(Side::Dst, op, p)
    }
    fn net(s: &str) -> IpNet {
        let (a, l) = s.split_once('/').expect("test net has a prefix");
        IpNet::new(
            a.parse().expect("test address"),
            l.parse().expect("test prefix"),
        )
        .expect("test prefix in range")
    }
    fn host(s: &str) -> IpNet {
        IpNet::host(s.parse().expect("test address"))
    }
    fn addr(side: Side, n: Option<IpNet>, p: Option<u16>) -> Expr {
        Expr::Addr {
            side,
            net: n,
            port: p,
        }
    }
    fn src(n: IpNet) -> Expr {
        addr(Side::Src, Some(n), None)
    }
    fn dst(n: IpNet) -> Expr {
        addr(Side::Dst, Some(n), None)
    }
    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }
    fn parse(s: &str) -> Expr {
        match s.parse::<Expr>() {
            Ok(e) => e,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    use CmpOp::{Eq as EQ, Ge as GE, Gt as GT, Le as LE, Lt as LT, Ne as NE};

    // --- 1. man ss ----------------------------------------------------------------------

    /// The TCP state/address/port filters among the USAGE EXAMPLES of `man 8 ss`
    /// (iproute2, man/man8/ss.8), as the shell hands them to the program: the words after
    /// ss's own options (`-o`). The other examples there are unix sockets (`ss -x src
    /// /tmp/.X11-unix/*`), socket tables (`-A 'all,!tcp'`) or options only (`-t -a`).
    const MAN_SS_EXAMPLES: [&[&str]; 2] = [
        // ss -o state established '( dport = :ssh or sport = :ssh )'
        &["state", "established", "( dport = :ssh or sport = :ssh )"],
        // ss -o state fin-wait-1 '( sport = :http or sport = :https )' dst 193.233.7/24
        &[
            "state",
            "fin-wait-1",
            "( sport = :http or sport = :https )",
            "dst",
            "193.233.7/24",
        ],
    ];

    #[test]
    fn man_ss_usage_examples_parse_to_the_expected_trees() {
        let expected = [
            and(states(&[Established]), or(dport(EQ, 22), sport(EQ, 22))),
            and(
                and(states(&[FinWait1]), or(sport(EQ, 80), sport(EQ, 443))),
                dst(net("193.233.7.0/24")),
            ),
        ];
        for (ws, want) in MAN_SS_EXAMPLES.iter().zip(expected) {
            let got = parse_args(&words(ws)).expect("man example parses");
            assert_eq!(got, Some(want), "{ws:?}");
        }
    }

    /// `man ss`, STATE-FILTER: every state identifier and group, with the group
    /// definitions the man page gives (checked against `scan_state()` in ss.c).
    #[test]
    fn man_ss_state_identifiers_and_groups() {
        let singles = [
            ("established", Established),
            ("syn-sent", SynSent),
            ("syn-recv", SynRecv),
            ("fin-wait-1", FinWait1),
            ("fin-wait-2", FinWait2),
            ("time-wait", TimeWait),
            ("closed", Close),
            ("close-wait", CloseWait),
            ("last-ack", LastAck),
            ("listening", Listen),
            ("closing", Closing),
        ];
        for (name, s) in singles {
            assert_eq!(parse(&format!("state {name}")), states(&[s]), "{name}");
        }
        let all = StateSet::ALL;
        let connected = all.intersection(StateSet::of(&[Listen, Close]).complement());
        let synchronized = connected.intersection(StateSet::of(&[SynSent]).complement());
        let bucket = StateSet::of(&[TimeWait, SynRecv]);
        let big = bucket.complement();
        assert_eq!(all.len(), 11);
        assert_eq!(connected.len(), 9);
        assert_eq!(synchronized.len(), 8);
        for (name, set) in [
            ("all", all),
            ("connected", connected),
            ("synchronized", synchronized),
            ("bucket", bucket),
            ("big", big),
        ] {
            assert_eq!(parse(&format!("state {name}")), Expr::State(set), "{name}");
        }
        // ss's extra spellings, and case-insensitivity (strcasecmp).
        assert_eq!(parse("state close"), states(&[Close]));
        assert_eq!(parse("state unconnected"), states(&[Close]));
        assert_eq!(parse("state syn-rcv"), states(&[SynRecv]));
        assert_eq!(parse("state ESTABLISHED"), states(&[Established]));
        assert_eq!(parse("state listen"), states(&[Listen]));
    }

    /// `man ss`, EXPRESSION: "Each of the following groups of operators are all
    /// equivalent", and "If no operator is supplied "=" is assumed".
    #[test]
    fn man_ss_operator_aliases_are_equivalent() {
        let groups: [(&[&str], CmpOp); 6] = [
            (&["=", "==", "eq", ""], EQ),
            (&["!=", "ne", "neq"], NE),
            (&[">", "gt"], GT),
            (&["<", "lt"], LT),
            (&[">=", "ge", "geq"], GE),
            (&["<=", "le", "leq"], LE),
        ];
        for (spellings, op) in groups {
            for s in spellings {
                assert_eq!(parse(&format!("dport {s} :80")), dport(op, 80), "{s}");
                assert_eq!(parse(&format!("sport {s} :80")), sport(op, 80), "{s}");
            }
        }
        let a = states(&[Established]);
        let b = dport(EQ, 80);
        for s in ["!", "not"] {
            assert_eq!(parse(&format!("{s} state established")), not(a.clone()));
        }
        for s in ["|", "||", "or"] {
            assert_eq!(
                parse(&format!("state established {s} dport = :80")),
                or(a.clone(), b.clone())
            );
        }
        for s in ["&", "&&", "and", ""] {
            assert_eq!(
                parse(&format!("state established {s} dport = :80")),
                and(a.clone(), b.clone())
            );
        }
        // `{dst|src} [=] HOST`
        assert_eq!(parse("dst = 10.0.0.1"), parse("dst 10.0.0.1"));
        assert_eq!(parse("src == 10.0.0.1"), src(host("10.0.0.1")));
    }

    /// `man ss` HOST SYNTAX for inet/inet6: `[FAMILY:]ADDRESS[:PORT]`, "*" as a wildcard for
    /// address or port, IPv6 in brackets, CIDR prefixes.
    #[test]
    fn man_ss_host_syntax() {
        assert_eq!(parse("dst 10.0.0.0/8"), dst(net("10.0.0.0/8")));
        assert_eq!(
            parse("src 192.168.1.100:8080"),
            addr(Side::Src, Some(host("192.168.1.100")), Some(8080))
        );
        assert_eq!(
            parse("dst [fd00::1]:443"),
            addr(Side::Dst, Some(host("fd00::1")), Some(443))
        );
        assert_eq!(parse("dst fd00::/64"), dst(net("fd00::/64")));
        assert_eq!(parse("dst [fd00::/64]"), dst(net("fd00::/64")));
        assert_eq!(
            parse("dst [fd00::/64]:443"),
            addr(Side::Dst, Some(net("fd00::/64")), Some(443))
        );
        assert_eq!(parse("dst [fd00::]/64:443"), parse("dst [fd00::/64]:443"));
        assert_eq!(parse("dst fd00::1"), dst(host("fd00::1")));
        assert_eq!(
            parse("dst 10.0.0.0/8:80"),
            addr(Side::Dst, Some(net("10.0.0.0/8")), Some(80))
        );
        assert_eq!(parse("src *:22"), addr(Side::Src, None, Some(22)));
        assert_eq!(parse("src :22"), addr(Side::Src, None, Some(22)));
        assert_eq!(parse("src *"), addr(Side::Src, None, None));
        assert_eq!(parse("src 10.0.0.1:*"), src(host("10.0.0.1")));
        assert_eq!(
            parse("dst 192.168.1.5:http"),
            addr(Side::Dst, Some(host("192.168.1.5")), Some(80))
        );
        // Host bits are cleared: one network, one value.
        assert_eq!(parse("dst 10.1.2.3/8"), dst(net("10.0.0.0/8")));
        // `{dport|sport} [OP] [FAMILY:]:PORT`: the colon is optional, as in ss.c.
        assert_eq!(parse("dport = 80"), dport(EQ, 80));
        assert_eq!(parse("dport :https"), dport(EQ, 443));
    }

    /// Filters as they circulate in ss tutorials (not in the man page), with their trees.
    #[test]
    fn common_ss_usage_parses() {
        let cases = [
            ("sport = :http", sport(EQ, 80)),
            ("dport > :1024", dport(GT, 1024)),
            ("sport < :32000", sport(LT, 32000)),
            ("sport eq :22", sport(EQ, 22)),
            ("dport != :22", dport(NE, 22)),
            (
                "state connected sport = :http",
                and(Expr::State(StateSet(CONNECTED_BITS)), sport(EQ, 80)),
            ),
            (
                "( sport = :http or sport = :https )",
                or(sport(EQ, 80), sport(EQ, 443)),
            ),
            (
                "src 120.33.31.1:http",
                addr(Side::Src, Some(host("120.33.31.1")), Some(80)),
            ),
            ("dst 192.168.1.5", dst(host("192.168.1.5"))),
            (
                "( ! dst 10.211.55.2 && dport != 58181 )",
                and(not(dst(host("10.211.55.2"))), dport(NE, 58181)),
            ),
            ("src == *:22", addr(Side::Src, None, Some(22))),
            (
                "state established state time-wait",
                states(&[Established, TimeWait]),
            ),
            (
                "exclude listening",
                Expr::State(StateSet::of(&[Listen]).complement()),
            ),
            (
                "state all exclude time-wait exclude syn-recv",
                Expr::State(StateSet(BIG_BITS)),
            ),
            (
                "dport = :80 src 10.0.0.1",
                and(dport(EQ, 80), src(host("10.0.0.1"))),
            ),
            (
                "dst 10.0.0.0/8 and not dport = :22",
                and(dst(net("10.0.0.0/8")), not(dport(EQ, 22))),
            ),
            ("sport >= :1024", sport(GE, 1024)),
            ("dst != 10.0.0.1", not(dst(host("10.0.0.1")))),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), want, "{text}");
        }
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let (a, b, c) = (dport(EQ, 1), dport(EQ, 2), dport(EQ, 3));
        assert_eq!(
            parse("dport = :1 or dport = :2 and dport = :3"),
            or(a.clone(), and(b.clone(), c.clone()))
        );
        assert_eq!(
            parse("dport = :1 and dport = :2 or dport = :3"),
            or(and(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            parse("not dport = :1 and dport = :2"),
            and(not(a.clone()), b.clone())
        );
        assert_eq!(
            parse("not ( dport = :1 and dport = :2 )"),
            not(and(a.clone(), b.clone()))
        );
        assert_eq!(
            parse("dport = :1 or dport = :2 dport = :3"),
            or(a.clone(), and(b.clone(), c.clone())),
            "implicit and binds like and"
        );
        assert_eq!(parse("! ! dport = :1"), not(not(a)));
    }

    #[test]
    fn argv_words_and_one_quoted_word_are_the_same() {
        let split = parse_args(&words(&[
            "state",
            "time-wait",
            "(",
            "dport",
            "=",
            ":5432",
            ")",
        ]));
        let glued = parse_args(&words(&["state", "time-wait", "( dport = :5432 )"]));
        let one = parse_args(&words(&["state time-wait (dport = :5432)"]));
        assert_eq!(split, glued);
        assert_eq!(split, one);
        assert_eq!(split, Ok(Some(and(states(&[TimeWait]), dport(EQ, 5432)))));
        assert_eq!(parse_args(&[]), Ok(None));
        assert_eq!(parse_args(&words(&["", " "])), Ok(None));
    }

    #[test]
    fn printing_is_canonical() {
        let cases = [
            ("dport eq 80", "dport = :80"),
            ("sport ge :1024", "sport >= :1024"),
            ("dst 193.233.7/24", "dst 193.233.7.0/24"),
            ("dst fd00::1", "dst [fd00::1]"),
            ("src *:80", "src *:80"),
            ("state time-wait state syn-recv", "state bucket"),
            ("exclude listening", "exclude listening"),
            ("state all exclude all", "exclude all"),
            (
                "( dport = :1 or dport = :2 ) dport = :3",
                "( dport = :1 or dport = :2 ) and dport = :3",
            ),
            (
                "dport = :1 or ( dport = :2 or dport = :3 )",
                "dport = :1 or ( dport = :2 or dport = :3 )",
            ),
            ("not (not dport = :1)", "not not dport = :1"),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).to_string(), want, "{input}");
        }
        assert_eq!(
            parse_args(&words(&[
                "state",
                "established",
                "( dport = :ssh or sport = :ssh )"
            ]))
            .map(|e| e.map(|e| e.to_string())),
            Ok(Some(
                "state established and ( dport = :22 or sport = :22 )".to_string()
            ))
        );
    }

    // --- 2. errors ------------------------------------------------------------------------

    #[test]
    fn malformed_inputs_have_exact_messages_and_columns() {
        // (input, the whole Display text, the token)
        let cases: &[(&str, &str, &str)] = &[
            (
                "dport = 80x",
                "expected ':PORT' after 'dport =' at column 9",
                "80x",
            ),
            (
                "dport =",
                "expected ':PORT' after 'dport =' at column 8",
                "",
            ),
            ("sport", "expected ':PORT' after 'sport' at column 6", ""),
            (
                "dport ge and",
                "expected ':PORT' after 'dport ge' at column 10",
                "and",
            ),
            (
                "dport = :70000",
                "port '70000' is out of range (0-65535) at column 9",
                ":70000",
            ),
            (
                "dport = :htp",
                "unknown service name 'htp' (use a port number, e.g. :8080) at column 9",
                ":htp",
            ),
            (
                "dport = :*",
                "wildcard port ':*' matches every socket (leave the condition out) at column 9",
                ":*",
            ),
            (
                "dport => :80",
                "unknown operator '=>' after 'dport' (expected =, !=, <, <=, >, >=) at column 7",
                "=>",
            ),
            (
                "state close_wait",
                "unknown state 'close_wait' (did you mean close-wait?) at column 7",
                "close_wait",
            ),
            (
                "state FIN_WAIT1",
                "unknown state 'FIN_WAIT1' (did you mean fin-wait-1?) at column 7",
                "FIN_WAIT1",
            ),
            (
                "state open",
                "unknown state 'open' (expected one of established, syn-sent, syn-recv, \
                 fin-wait-1, fin-wait-2, time-wait, closed, close-wait, last-ack, listening, \
                 closing, or a group: all, connected, synchronized, bucket, big) at column 7",
                "open",
            ),
            (
                "state",
                "expected a state name after 'state' at column 6",
                "",
            ),
            (
                "exclude )",
                "expected a state name after 'exclude' at column 9",
                ")",
            ),
            ("( dport = :80", "unbalanced '(' at column 1", "("),
            (
                "((dport = :80) or (sport = :80)",
                "unbalanced '(' at column 1",
                "(",
            ),
            ("dport = :80 )", "unexpected ')' at column 13", ")"),
            ("state listen)", "unexpected ')' at column 13", ")"),
            (")", "unexpected ')' at column 1", ")"),
            ("( )", "expected an expression after '(' at column 3", ")"),
            (
                "dst 10.0.0.0/33",
                "invalid prefix length '/33' for IPv4 at column 5",
                "10.0.0.0/33",
            ),
            (
                "dst fd00::/129",
                "invalid prefix length '/129' for IPv6 at column 5",
                "fd00::/129",
            ),
            (
                "src 10.0.0.0/x",
                "invalid prefix length '/x' for IPv4 at column 5",
                "10.0.0.0/x",
            ),
            ("not", "expected an expression after 'not' at column 4", ""),
            (
                "not )",
                "expected an expression after 'not' at column 5",
                ")",
            ),
            (
                "dport = :80 and",
                "expected an expression after 'and' at column 16",
                "",
            ),
            (
                "dport = :80 or or dport = :1",
                "expected an expression after 'or' at column 16",
                "or",
            ),
            (
                "and dport = :80",
                "expected an expression before 'and' at column 1",
                "and",
            ),
            (
                "foo",
                "unknown word 'foo' (expected state, sport, dport, src, dst, not, '(') at column 1",
                "foo",
            ),
            (
                "dport = :80 bar",
                "unknown word 'bar' (expected state, sport, dport, src, dst, not, '(') at column 13",
                "bar",
            ),
            (
                "dprot = :80",
                "unknown word 'dprot' (did you mean dport?) at column 1",
                "dprot",
            ),
            (
                "DST 10.0.0.1",
                "unknown word 'DST' (did you mean dst?) at column 1",
                "DST",
            ),
            (
                "established",
                "unknown word 'established' (did you mean 'state established'?) at column 1",
                "established",
            ),
            (
                "dport=:80",
                "unknown word 'dport=:80' (write 'dport = :80', with spaces) at column 1",
                "dport=:80",
            ),
            (
                "= :80",
                "unexpected '=' (expected state, sport, dport, src, dst, not, '(') at column 1",
                "=",
            ),
            (
                "dst",
                "expected ADDRESS[/PREFIX][:PORT] after 'dst' at column 4",
                "",
            ),
            (
                "src = or",
                "expected ADDRESS[/PREFIX][:PORT] after 'src =' at column 7",
                "or",
            ),
            (
                "dst > 10.0.0.1",
                "operator '>' does not apply to 'dst' (use = or !=) at column 5",
                ">",
            ),
            (
                "dst db.example.com",
                "host names are not resolved: 'db.example.com' (use an IP address) at column 5",
                "db.example.com",
            ),
            (
                "dst 10.1",
                "incomplete IPv4 address '10.1' (add a prefix length, e.g. '10.1/16') at column 5",
                "10.1",
            ),
            (
                "dst 10.0.0.256",
                "invalid IPv4 address '10.0.0.256' at column 5",
                "10.0.0.256",
            ),
            (
                "dst [fd00::1:443",
                "missing ']' in '[fd00::1:443' at column 5",
                "[fd00::1:443",
            ),
            (
                "dst fe80::1:2",
                "ambiguous IPv6 address 'fe80::1:2' (write '[fe80::1:2]' for the address, or \
                 '[fe80::1]:2' for address and port) at column 5",
                "fe80::1:2",
            ),
            (
                "src 10.0.0.1:x!",
                "invalid port 'x!' in '10.0.0.1:x!' at column 5",
                "10.0.0.1:x!",
            ),
            (
                "dst inet6:[fd00::1]",
                "address family prefix 'inet6:' is not supported (netwatch traces TCP over \
                 IPv4 and IPv6; use -4 or -6) at column 5",
                "inet6:[fd00::1]",
            ),
            (
                "dev = eth0",
                "'dev' is not supported by netwatch (it filters on state, ports and addresses) \
                 at column 1",
                "dev",
            ),
            ("", "empty filter expression at column 1", ""),
        ];
        for (input, want, token) in cases {
            match input.parse::<Expr>() {
                Ok(e) => panic!("{input:?} should fail, parsed as {e}"),
                Err(e) => {
                    assert_eq!(e.to_string(), *want, "{input:?}");
                    assert_eq!(e.token, *token, "{input:?}");
                }
            }
        }
    }

    #[test]
    fn error_columns_count_in_the_joined_words() {
        let err = parse_args(&words(&["state", "time-wait", "( dport = :5432x )"]))
            .expect_err("bad port");
        // "state time-wait ( dport = :5432x )": ':5432x' starts at column 27.
        assert_eq!(
            err.to_string(),
            "expected ':PORT' after 'dport =' at column 27"
        );
        assert_eq!(err.column, 27);
        assert_eq!(err.token, ":5432x");
        // Columns count characters, not bytes.
        let err = "dst é".parse::<Expr>().expect_err("not an address");
        assert_eq!(err.column, 5);
        let err = "state é foo".parse::<Expr>().expect_err("bad state");
        assert_eq!(err.column, 7);
        let err = "dport = :80 é".parse::<Expr>().expect_err("bad word");
        assert_eq!((err.column, err.token.as_str()), (13, "é"));
    }

    // --- 3. round trips -------------------------------------------------------------------

    fn arb_side() -> impl Strategy<Value = Side> {
        prop_oneof![Just(Side::Src), Just(Side::Dst)]
    }

    fn arb_op() -> impl Strategy<Value = CmpOp> {
        prop_oneof![
            Just(CmpOp::Eq),
            Just(CmpOp::Ne),
            Just(CmpOp::Lt),
            Just(CmpOp::Le),
            Just(CmpOp::Gt),
            Just(CmpOp::Ge),
        ]
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(o, p)| IpNet::new(IpAddr::from(o), p)),
            (any::<[u8; 16]>(), 0u8..=128).prop_map(|(o, p)| IpNet::new(IpAddr::from(o), p)),
            // IPv4-mapped and small IPv6 addresses print in their special forms.
            (any::<[u8; 4]>(), 96u8..=128).prop_map(|(o, p)| {
                IpNet::new(IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped()), p)
            }),
            (0u128..=0xffff_ffff, 120u8..=128)
                .prop_map(|(a, p)| IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
        ]
        .prop_filter_map("prefix in range", |n| n)
    }

    fn arb_leaf() -> impl Strategy<Value = Expr> {
        prop_oneof![
            any::<u16>().prop_map(|b| Expr::State(StateSet(b & ALL_BITS))),
            (arb_side(), arb_op(), any::<u16>()).prop_map(|(side, op, port)| Expr::Port {
                side,
                op,
                port
            }),
            (
                arb_side(),
                proptest::option::of(arb_net()),
                proptest::option::of(any::<u16>())
            )
                .prop_map(|(side, net, port)| Expr::Addr { side, net, port }),
        ]
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        arb_leaf().prop_recursive(5, 48, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| and(a, b)),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| or(a, b)),
                inner.prop_map(not),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn print_then_parse_gives_the_same_expression(e in arb_expr()) {
            let text = e.to_string();
            let back: Expr = text.parse().map_err(|err| {
                TestCaseError::fail(format!("{text:?} does not parse: {err}"))
            })?;
            prop_assert_eq!(&back, &e, "{}", text);
            prop_assert_eq!(back.to_string(), text.clone(), "printing is idempotent");
            // The same text split into argv words, as a shell would hand it over.
            let argv: Vec<String> = text.split(' ').map(String::from).collect();
            prop_assert_eq!(parse_args(&argv), Ok(Some(e)));
        }

        #[test]
        fn errors_point_at_their_token(
            ws in proptest::collection::vec(
                prop_oneof![
                    Just("state"), Just("exclude"), Just("established"), Just("close_wait"),
                    Just("sport"), Just("dport"), Just("src"), Just("dst"), Just("="),
                    Just("!="), Just(">="), Just("=>"), Just(":80"), Just("80x"),
                    Just("10.0.0.0/8"), Just("[fd00::1]:443"), Just("fd00::/129"),
                    Just("("), Just(")"), Just("not"), Just("and"), Just("or"),
                    Just("foo"), Just("é"), Just("dev"),
                ],
                0..10,
            )
        ) {
            let argv: Vec<String> = ws.iter().map(|w| w.to_string()).collect();
            let joined = argv.join(" ");
            match parse_args(&argv) {
                Ok(Some(e)) => {
                    let again: Expr = e.to_string().parse().map_err(|err| {
                        TestCaseError::fail(format!("reprint of {joined:?}: {err}"))
                    })?;
                    prop_assert_eq!(again, e);
                }
                Ok(None) => prop_assert!(joined.trim().is_empty()),
                Err(err) => {
                    let len = joined.trim_end().chars().count();
                    prop_assert!(err.column >= 1 && err.column <= len + 1, "{err:?}");
                    let at: String = joined.chars().skip(err.column - 1).collect();
                    prop_assert!(at.starts_with(&err.token), "{err:?} in {joined:?}");
                    if err.token.is_empty() {
                        prop_assert_eq!(err.column, len + 1, "{:?}", err);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Expr>();
        }
    }

    // --- 4. matching ----------------------------------------------------------------------

    struct Sock {
        state: Option<TcpStateName>,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    }

    impl Subject for Sock {
        fn state(&self) -> Option<TcpStateName> {
            self.state
        }
        fn local(&self) -> (IpAddr, u16) {
            self.local
        }
        fn remote(&self) -> (IpAddr, u16) {
            self.remote
        }
    }

    fn sock(state: Option<TcpStateName>, local: &str, remote: &str) -> Sock {
        let ep = |s: &str| -> (IpAddr, u16) {
            let (a, p) = s.rsplit_once(':').expect("test endpoint has a port");
            let a = a.trim_start_matches('[').trim_end_matches(']');
            (
                a.parse().expect("test address"),
                p.parse().expect("test port"),
            )
        };
        Sock {
            state,
            local: ep(local),
            remote: ep(remote),
        }
    }

    #[test]
    fn matches_a_table_of_sockets() {
        // A client of a web server, its server side, a listener, a v6 client, a socket of
        // unknown state, a dual-stack socket talking to an IPv4 peer, and a request socket.
        let web_client = sock(Some(Established), "192.168.1.100:51000", "10.1.2.3:443");
        let web_server = sock(Some(CloseWait), "10.1.2.3:443", "192.168.1.100:51000");
        let listener = sock(Some(Listen), "0.0.0.0:22", "0.0.0.0:0");
        let v6 = sock(Some(TimeWait), "[fd00::5]:40000", "[fd00::1]:443");
        let unknown = sock(None, "192.168.1.100:51001", "10.9.9.9:5432");
        let mapped = sock(
            Some(Established),
            "[::ffff:10.1.2.3]:8080",
            "[::ffff:10.7.0.1]:60000",
        );
        let request = sock(Some(NewSynRecv), "10.1.2.3:443", "192.168.1.7:50000");
        let all = [
            ("web_client", &web_client),
            ("web_server", &web_server),
            ("listener", &listener),
            ("v6", &v6),
            ("unknown", &unknown),
            ("mapped", &mapped),
            ("request", &request),
        ];
        let table: &[(&str, &[&str])] = &[
            ("state established", &["web_client", "mapped"]),
            ("state close-wait", &["web_server"]),
            ("state syn-recv", &["request"]),
            ("state bucket", &["v6", "request"]),
            (
                "state connected",
                &["web_client", "web_server", "v6", "mapped", "request"],
            ),
            (
                "state synchronized",
                &["web_client", "web_server", "v6", "mapped", "request"],
            ),
            (
                "exclude listening",
                &["web_client", "web_server", "v6", "mapped", "request"],
            ),
            (
                "not state listening",
                &[
                    "web_client",
                    "web_server",
                    "v6",
                    "unknown",
                    "mapped",
                    "request",
                ],
            ),
            (
                "state established state time-wait",
                &["web_client", "v6", "mapped"],
            ),
            ("dport = :443", &["web_client", "v6"]),
            ("sport = :https", &["web_server", "request"]),
            (
                "dport != :443",
                &["web_server", "listener", "unknown", "mapped", "request"],
            ),
            ("sport >= :40000", &["web_client", "v6", "unknown"]),
            ("sport > :40000", &["web_client", "unknown"]),
            ("sport < :443", &["listener"]),
            ("sport <= :443", &["web_server", "listener", "request"]),
            ("dst 10.0.0.0/8", &["web_client", "unknown", "mapped"]),
            ("dst 10.1.2.3", &["web_client"]),
            ("dst 10.1.2.3:443", &["web_client"]),
            ("dst 10.1.2.3:80", &[]),
            ("src 192.168.1.0/24", &["web_client", "unknown"]),
            ("src 192.168.1.100:51000", &["web_client"]),
            ("dst fd00::/64", &["v6"]),
            ("dst [fd00::1]:443", &["v6"]),
            ("dst ::ffff:10.7.0.1", &["mapped"]),
            (
                "src 0.0.0.0/0",
                &[
                    "web_client",
                    "web_server",
                    "listener",
                    "unknown",
                    "mapped",
                    "request",
                ],
            ),
            ("src ::/0", &["v6", "mapped"]),
            ("src *:443", &["web_server", "request"]),
            (
                "dst != 10.0.0.0/8",
                &["web_server", "listener", "v6", "request"],
            ),
            // not > and > or
            (
                "dport = :443 or dport = :5432 and state established",
                &["web_client", "v6"],
            ),
            (
                "( dport = :443 or dport = :5432 ) and state established",
                &["web_client"],
            ),
            ("not dport = :443 and src 192.168.1.0/24", &["unknown"]),
            (
                "not ( dport = :443 and src 192.168.1.0/24 )",
                &[
                    "web_server",
                    "listener",
                    "v6",
                    "unknown",
                    "mapped",
                    "request",
                ],
            ),
            ("state time-wait or not dst 0.0.0.0/0", &["v6"]),
        ];
        for (filter, want) in table {
            let e = parse(filter);
            let got: Vec<&str> = all
                .iter()
                .filter(|(_, s)| e.matches(*s))
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(&got, want, "{filter}");
        }
    }

    #[test]
    fn required_ports_are_a_sound_bound() {
        type Case = (&'static str, Side, Option<Vec<RangeInclusive<u16>>>);
        let cases: &[Case] = &[
            ("dport = :443", Side::Dst, Some(vec![443..=443])),
            ("dport = :443", Side::Src, None),
            ("dport != :22", Side::Dst, Some(vec![0..=21, 23..=65535])),
            ("not dport = :22", Side::Dst, Some(vec![0..=21, 23..=65535])),
            ("dport < :0", Side::Dst, Some(vec![])),
            ("dport > :65535", Side::Dst, Some(vec![])),
            (
                "dport >= :1024 and dport < :2048",
                Side::Dst,
                Some(vec![1024..=2047]),
            ),
            (
                "( dport = :80 or dport = :443 ) and state established",
                Side::Dst,
                Some(vec![80..=80, 443..=443]),
            ),
            ("dport = :80 or dport = :81", Side::Dst, Some(vec![80..=81])),
            ("dport = :80 or src 10.0.0.1", Side::Dst, None),
            ("dst 10.0.0.1:80", Side::Dst, Some(vec![80..=80])),
            ("not dst 10.0.0.1:80", Side::Dst, None),
            (
                "not ( dport < :1024 or dport > :2000 )",
                Side::Dst,
                Some(vec![1024..=2000]),
            ),
        ];
        for (filter, side, want) in cases {
            assert_eq!(&parse(filter).required_ports(*side), want, "{filter}");
        }
    }

    proptest! {
        /// Whatever matches lies inside the bounds the pre-filter would use.
        #[test]
        fn bounds_never_drop_a_match(
            e in arb_expr(),
            st in proptest::option::of(0u8..=12),
            lport in any::<u16>(),
            rport in prop_oneof![any::<u16>(), 0u16..100],
        ) {
            let s = Sock {
                state: st.and_then(TcpStateName::from_kernel),
                local: (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), lport),
                remote: (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), rport),
            };
            if e.matches(&s) {
                if let Some(r) = e.required_ports(Side::Src) {
                    prop_assert!(r.iter().any(|r| r.contains(&lport)), "{e}");
                }
                if let Some(r) = e.required_ports(Side::Dst) {
                    prop_assert!(r.iter().any(|r| r.contains(&rport)), "{e}");
                }
            }
        }
    }

    #[test]
    fn kernel_numbers_round_trip() {
        for n in 0..=13u8 {
            match TcpStateName::from_kernel(n) {
                Some(s) => assert_eq!(s.kernel_number(), n),
                None => assert!(n == 0 || n == 13),
            }
        }
        assert!(StateSet::of(&[SynRecv]).contains(NewSynRecv));
    }

    #[test]
    fn help_examples_parse() {
        let section = HELP
            .split("EXAMPLES\n")
            .nth(1)
            .and_then(|s| s.split("\n\n").next())
            .expect("HELP has an EXAMPLES section");
        let mut count = 0;
        for line in section.lines() {
            // Example, then two or more spaces, then an optional comment.
            let example = line
                .trim()
                .split("   ")
                .next()
                .unwrap_or("")
                .replace('\'', "");
            assert!(example.parse::<Expr>().is_ok(), "HELP example {example:?}");
            count += 1;
        }
        assert!(count >= 8);
        assert_eq!(
            "dport = 80x".parse::<Expr>().map_err(|e| e.to_string()),
            Err("expected ':PORT' after 'dport =' at column 9".to_string())
        );
    }
}
