//! `netwatch trace`: one line per event, text columns or JSON lines; with `--stacks`, the
//! code path of every accept and connect, symbolized as the event passes.

use std::{borrow::Cow, io};

use crate::{
    cli::OutputArgs,
    host::{clock::WallClock, stacks::Stacks},
    kernel::probe::Probe,
    model::{event::Event, selection::Selection},
    pipeline::{
        session::Header,
        sink::{Filtered, JsonSink, QuietNote, Sink, TextSink, TimeStyle, wraps},
    },
};

use super::stdout;

/// The printer, and (`--stacks`) the stack symbolizer once the probe offers its stack map.
struct TraceSink {
    inner: Box<dyn Sink>,
    stacks: Option<Box<Stacks>>,
}

/// What `trace` (and `analyze` without `--life`/`--report`) prints.
pub fn output(
    o: &OutputArgs,
    stacks: bool,
    selection: Selection,
    header: &Header,
) -> Box<dyn Sink> {
    let clock = WallClock::from_offset(header.wall_offset_ns);
    let printer: Box<dyn Sink> = if o.json {
        Box::new(JsonSink::new(stdout(), clock))
    } else {
        let time = if o.timestamp {
            TimeStyle::Wall
        } else {
            TimeStyle::Relative {
                start_ns: header.started_ns,
            }
        };
        Box::new(TextSink::new(stdout(), clock, time, o.wide))
    };
    let inner = QuietNote::boxed(Filtered::boxed(selection, printer));
    if o.json && stacks {
        Box::new(TraceSink {
            inner,
            stacks: None,
        })
    } else {
        inner
    }
}

impl Sink for TraceSink {
    wraps!(inner);

    fn attach(&mut self, probe: &Probe) -> anyhow::Result<()> {
        self.stacks = Some(Box::new(Stacks::new(probe.stack_map()?)));
        self.inner.attach(probe)
    }

    fn completed<'e>(&mut self, ev: &'e Event) -> Cow<'e, Event> {
        match (&mut self.stacks, ev.pid, ev.stack_id) {
            (Some(stacks), Some(pid), Some(id)) if ev.carries_stack() && ev.stack.is_empty() => {
                let mut ev = ev.clone();
                ev.stack = stacks.frames(pid, id, ev.sp_word).to_vec();
                Cow::Owned(ev)
            }
            _ => Cow::Borrowed(ev),
        }
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let ev = self.completed(ev);
        self.inner.event(&ev)
    }
}
