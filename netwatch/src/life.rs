//! `netwatch life`: one line per connection when it ends (tcplife's columns, plus ROLE and END),
//! or its full record as JSON.
use std::io::{self, Write};

use crate::{
    event::Event,
    sink::Sink,
    tracker::{Connection, Fact, Tracker},
};

fn kb(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_string(), |b| (b / 1024).to_string())
}

/// Feeds the tracker and prints each connection it finishes.
pub struct LifeSink<W: Write> {
    out: W,
    json: bool,
    wide: bool,
    header_done: bool,
    pub tracker: Tracker,
}

impl<W: Write> LifeSink<W> {
    pub fn new(out: W, json: bool, wide: bool, max_sockets: usize) -> Self {
        Self {
            out,
            json,
            wide,
            header_done: false,
            tracker: Tracker::new(max_sockets),
        }
    }

    fn print(&mut self, c: &Connection) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, c)?;
            return self.out.write_all(b"\n");
        }
        let aw = if self.wide { 39 } else { 15 };
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:>7} {:<15} {:<aw$} {:>5} {:<aw$} {:>5} {:>6} {:>6} {:>10} {:<7} END",
                "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS", "ROLE"
            )?;
        }
        let role = match c.role {
            crate::tracker::Role::Active => "active",
            crate::tracker::Role::Passive => "passive",
            crate::tracker::Role::Unknown => "-",
        };
        writeln!(
            self.out,
            "{:>7} {:<15} {:<aw$} {:>5} {:<aw$} {:>5} {:>6} {:>6} {:>10} {:<7} {}",
            c.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            c.comm.as_deref().unwrap_or("-"),
            c.saddr.to_string(),
            c.sport,
            c.daddr.to_string(),
            c.dport,
            kb(c.bytes_sent),
            kb(c.bytes_received),
            c.ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.3}")),
            role,
            c.end.label()
        )
    }

    /// Ends what is still waiting (end of stream) and prints it.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut done = Vec::new();
        self.tracker.flush(&mut |Fact::Ended(c)| done.push(c));
        for c in done {
            self.print(&c)?;
        }
        self.out.flush()
    }
}

impl<W: Write> Sink for LifeSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let mut done = Vec::new();
        self.tracker
            .on_event(ev, &mut |Fact::Ended(c)| done.push(c));
        for c in done {
            self.print(&c)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
