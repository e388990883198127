//! The terminal side of the live view: raw mode and the alternate screen (always restored:
//! on quit, on error, on drop and on panic), keys read without blocking, and the frame drawn
//! with ratatui.
use std::{
    io::{self, BufWriter, Stdout, Write as _},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ratatui::{
    Frame, Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor::{Hide, Show},
        event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table, Wrap},
};

use super::view::{ProcFilter, UiState, View};

/// Whether the terminal is in raw mode on the alternate screen now.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Leaves the alternate screen, shows the cursor, leaves raw mode; does nothing when the
/// terminal is not taken (so it can run twice: on quit and again on drop).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let mut out = io::stdout();
        let _ = execute!(out, LeaveAlternateScreen, Show);
        let _ = out.flush();
    }
}

/// The terminal while the view runs; restores it when dropped.
pub struct Tui {
    terminal: Terminal<CrosstermBackend<BufWriter<Stdout>>>,
}

impl Tui {
    /// Takes the terminal: raw mode, alternate screen, hidden cursor. A panic from here on
    /// restores the terminal before its message is printed.
    pub fn enter() -> io::Result<Tui> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let taken = execute!(io::stdout(), EnterAlternateScreen, Hide).and_then(|()| {
            Terminal::new(CrosstermBackend::new(BufWriter::with_capacity(
                64 * 1024,
                io::stdout(),
            )))
        });
        match taken {
            Ok(terminal) => Ok(Tui { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }

    pub fn draw(&mut self, view: &View, ui: &UiState) -> io::Result<()> {
        self.terminal.draw(|f| render(f, view, ui))?;
        Ok(())
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
    }
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    Quit,
    /// Ctrl-C: quit, then print the report.
    QuitWithReport,
}

/// Keys and resizes waiting now; never blocks (the event stream goes on meanwhile).
pub fn pending_input() -> io::Result<Vec<TermEvent>> {
    let mut out = Vec::new();
    // Bounded: a paste of a thousand characters waits for the next flush, 50 ms later.
    while out.len() < 64 && event::poll(Duration::ZERO)? {
        out.push(event::read()?);
    }
    Ok(out)
}

/// Applies one terminal event to the view's state.
pub fn on_input(ui: &mut UiState, ev: &TermEvent) -> Action {
    let key = match ev {
        TermEvent::Key(k) if k.kind != KeyEventKind::Release => k,
        TermEvent::Resize(..) => return Action::Redraw,
        _ => return Action::Nothing,
    };
    on_key(ui, key)
}

fn on_key(ui: &mut UiState, key: &KeyEvent) -> Action {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Action::QuitWithReport;
    }
    if let Some(typed) = &mut ui.prompt {
        match key.code {
            KeyCode::Enter => {
                ui.filter = ProcFilter::parse(typed);
                ui.prompt = None;
            }
            KeyCode::Esc => ui.prompt = None,
            KeyCode::Backspace => {
                typed.pop();
            }
            KeyCode::Char(c) if !ctrl && typed.len() < 64 => typed.push(c),
            _ => return Action::Nothing,
        }
        return Action::Redraw;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('s') => {
            ui.sort = ui.sort.next();
            Action::Redraw
        }
        KeyCode::Char('p') => {
            ui.prompt = Some(String::new());
            Action::Redraw
        }
        KeyCode::Char('c') => {
            ui.filter = None;
            Action::Redraw
        }
        _ => Action::Nothing,
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// Lines `text` takes when wrapped at `width`.
fn height(text: &[String], width: u16) -> u16 {
    let w = usize::from(width.max(1));
    text.iter()
        .map(|l| l.chars().count().max(1).div_ceil(w) as u16)
        .sum()
}

fn table(
    title: String,
    header: &[&str],
    widths: &[Constraint],
    rows: Vec<Vec<String>>,
) -> Table<'static> {
    Table::new(rows.into_iter().map(Row::new), widths.iter().copied())
        .header(Row::new(header.iter().map(|h| h.to_string())).style(bold()))
        .block(Block::bordered().title(title))
        .column_spacing(1)
}

/// The sparkline column: the newest population samples that fit, one per 5 s.
mod history {
    pub const WIDTH: u16 = 12;
    pub const TITLE: &str = "LAST MINUTE";

    pub fn last(line: &str) -> String {
        let n = line.chars().count();
        line.chars()
            .skip(n.saturating_sub(usize::from(WIDTH)))
            .collect()
    }
}

fn num(n: u64) -> String {
    format!("{n:>8}")
}

fn per_s(r: f64) -> String {
    format!("{r:>8.1}")
}

/// Draws one frame: a header (states, rates), then the tables, then the keys.
pub fn render(f: &mut Frame, v: &View, ui: &UiState) {
    let area = f.area();
    let head = vec![
        format!(
            "netwatch top | {:.0} s | every {:.1} s | sort: {} | process: {} | events {} ({:.0}/s) | lost {}",
            v.elapsed_s,
            v.interval_s,
            v.sort.label(),
            v.filter.as_deref().unwrap_or("all"),
            v.events,
            v.events_per_s,
            v.lost
        ),
        format!("STATES  {}", v.states_line()),
        format!("RATES   {}", v.rates_line()),
    ];
    let head_h = height(&head, area.width);
    let [top, middle, bottom, keys] = Layout::vertical([
        Constraint::Length(head_h),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let mut lines: Vec<Line> = head.into_iter().map(Line::from).collect();
    lines[0] = lines[0].clone().style(bold());
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), top);

    let [tw_area, cw_area] =
        Layout::horizontal([Constraint::Percentage(58), Constraint::Percentage(42)]).areas(middle);
    let tw_widths = [
        Constraint::Min(22),
        Constraint::Length(8),
        Constraint::Length(8),
        // alive/limit: "123456/28232".
        Constraint::Length(13),
        Constraint::Min(20),
        Constraint::Length(history::WIDTH),
    ];
    f.render_widget(
        table(
            format!(
                " TIME_WAIT by destination: {} born, {} alive ",
                v.time_wait_births, v.time_wait_alive
            ),
            &[
                "DESTINATION",
                "  BIRTHS",
                "   PER_S",
                "  ALIVE/LIMIT",
                "FORECAST (last 10 s)",
                history::TITLE,
            ],
            &tw_widths,
            v.time_wait
                .iter()
                .map(|r| {
                    vec![
                        r.destination.clone(),
                        num(r.births),
                        per_s(r.per_s),
                        match r.limit {
                            Some(l) => format!("{:>13}", format!("{}/{l}", r.alive)),
                            None => format!("{:>13}", r.alive),
                        },
                        if r.mass_close {
                            format!("{} (mass close)", r.forecast)
                        } else {
                            r.forecast.clone()
                        },
                        history::last(&r.sparkline()),
                    ]
                })
                .collect(),
        ),
        tw_area,
    );
    let cw_total: u64 = v.close_wait.iter().map(|r| r.sockets).sum();
    let stuck = format!("{:>8}", format!(">{:.0}s", v.close_wait_age_s));
    let cw_widths = [
        Constraint::Min(20),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Min(12),
    ];
    f.render_widget(
        table(
            format!(" CLOSE_WAIT holders: {cw_total} sockets "),
            &["PROCESS", " SOCKETS", "  OLDEST_S", &stuck, "CONTAINER"],
            &cw_widths,
            v.close_wait
                .iter()
                .map(|r| {
                    vec![
                        r.process.clone(),
                        num(r.sockets),
                        format!("{:>10.1}", r.oldest_s),
                        num(r.stuck),
                        r.container.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        ),
        cw_area,
    );

    let [fail_area, reset_area, rtx_area] = Layout::horizontal([
        Constraint::Percentage(36),
        Constraint::Percentage(40),
        Constraint::Percentage(24),
    ])
    .areas(bottom);
    let t = &v.failures_total;
    f.render_widget(
        table(
            format!(
                " Connect failures: {} refused, {} timed out, {} aborted ",
                t.refused, t.timeout, t.aborted
            ),
            &["DESTINATION", " REFUSED", " TIMEOUT", " ABORTED"],
            &[
                Constraint::Min(18),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
            v.failures
                .iter()
                .map(|r| {
                    vec![
                        r.destination.clone(),
                        num(r.failures.refused),
                        num(r.failures.timeout),
                        num(r.failures.aborted),
                    ]
                })
                .collect(),
        ),
        fail_area,
    );
    f.render_widget(
        table(
            format!(
                " Resets: {} sent, {} received ",
                v.resets_sent, v.resets_received
            ),
            &["DIRECTION", "REASON", "IN STATE", "   COUNT", "   PER_S"],
            &[
                Constraint::Length(9),
                Constraint::Min(12),
                Constraint::Length(11),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
            v.resets
                .iter()
                .map(|r| {
                    vec![
                        r.key.direction.to_string(),
                        r.key.reason.clone(),
                        r.key.state.to_string(),
                        num(r.count),
                        per_s(r.per_s),
                    ]
                })
                .collect(),
        ),
        reset_area,
    );
    f.render_widget(
        table(
            format!(" Retransmits by peer: {} ", v.retransmits_total),
            &["PEER", "   COUNT", "   PER_S"],
            &[
                Constraint::Min(15),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
            v.retransmits
                .iter()
                .map(|r| vec![r.peer.clone(), num(r.count), per_s(r.per_s)])
                .collect(),
        ),
        rtx_area,
    );

    let footer = match &ui.prompt {
        Some(typed) => format!(
            "process to show (pid or part of a command name), Enter to apply, Esc to cancel: {typed}_"
        ),
        None => {
            "q quit | s sort | p show one process | c show all | Ctrl-C quit and print the report"
                .to_string()
        }
    };
    f.render_widget(Paragraph::new(footer).style(bold()), keys);
}

/// The frame as text, for tests.
#[cfg(test)]
pub fn render_text(v: &View, ui: &UiState, width: u16, height: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let mut terminal = Terminal::new(backend).expect("test backend");
    terminal.draw(|f| render(f, v, ui)).expect("draw");
    let buf = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::top::view::{CwRow, Sort, TwRow};

    fn key(code: KeyCode) -> TermEvent {
        TermEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn keys_sort_filter_and_quit() {
        let mut ui = UiState::default();
        assert_eq!(on_input(&mut ui, &key(KeyCode::Char('s'))), Action::Redraw);
        assert_eq!(ui.sort, Sort::Rate);
        assert_eq!(on_input(&mut ui, &key(KeyCode::Char('p'))), Action::Redraw);
        // While typing, q and s are text, not commands.
        for c in "q42".chars() {
            on_input(&mut ui, &key(KeyCode::Char(c)));
        }
        on_input(&mut ui, &key(KeyCode::Backspace));
        assert_eq!(ui.prompt.as_deref(), Some("q4"));
        on_input(&mut ui, &key(KeyCode::Esc));
        assert_eq!((ui.prompt.as_deref(), ui.filter.as_ref()), (None, None));
        on_input(&mut ui, &key(KeyCode::Char('p')));
        for c in "4242".chars() {
            on_input(&mut ui, &key(KeyCode::Char(c)));
        }
        on_input(&mut ui, &key(KeyCode::Enter));
        assert_eq!(ui.filter, Some(ProcFilter::Pid(4242)));
        on_input(&mut ui, &key(KeyCode::Char('c')));
        assert_eq!(ui.filter, None);
        assert_eq!(on_input(&mut ui, &key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(on_input(&mut ui, &key(KeyCode::Esc)), Action::Quit);
        let ctrl_c = TermEvent::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert_eq!(on_input(&mut ui, &ctrl_c), Action::QuitWithReport);
        ui.prompt = Some(String::new());
        assert_eq!(on_input(&mut ui, &ctrl_c), Action::QuitWithReport);
    }

    #[test]
    fn a_frame_shows_states_holders_and_forecasts() {
        let v = View {
            elapsed_s: 12.0,
            interval_s: 1.0,
            sort: Sort::Count,
            filter: None,
            states: crate::commands::top::view::STATES
                .iter()
                .map(|s| {
                    (
                        *s,
                        u64::from(*s == crate::model::event::TcpState::CloseWait) * 5,
                    )
                })
                .collect(),
            time_wait_alive: 20,
            opens: Default::default(),
            connects_per_s: 0.0,
            accepts_per_s: 0.0,
            time_wait_births: 20,
            time_wait_per_s: 0.0,
            time_wait: vec![TwRow {
                destination: "10.0.0.7:5432".into(),
                births: 20,
                per_s: 2.0,
                alive: 20,
                forecast: "ports run out in ~46 s".into(),
                limit: Some(1000),
                history: vec![0, 500, 1000],
                mass_close: false,
            }],
            close_wait: vec![CwRow {
                process: "leaky[77]".into(),
                cgroup: Some("/system.slice/leaky.service".into()),
                container: Some("prod/shop-7f/web".into()),
                sockets: 5,
                oldest_s: 7.5,
                stuck: 5,
            }],
            close_wait_age_s: 5.0,
            failures: vec![],
            failures_total: Default::default(),
            resets_sent: 0,
            resets_received: 0,
            resets: vec![],
            retransmits_total: 0,
            retransmits: vec![],
            events: 100,
            events_per_s: 10.0,
            lost: 0,
        };
        let text = render_text(&v, &UiState::default(), 160, 30);
        assert!(text.contains("CLOSE_WAIT 5"), "{text}");
        assert!(text.contains("TIME_WAIT 20"), "{text}");
        assert!(text.contains("20/1000"), "{text}");
        assert!(text.contains("▁▅█"), "{text}");
        assert!(text.contains("leaky[77]"), "{text}");
        assert!(text.contains("prod/shop-7f/"), "{text}");
        assert!(text.contains("ports run out in ~46 s"), "{text}");
        assert!(text.contains("q quit"), "{text}");
        // A small terminal still draws (wrapped, cut), without panicking.
        render_text(&v, &UiState::default(), 40, 8);
        render_text(&v, &UiState::default(), 1, 1);
    }
}
