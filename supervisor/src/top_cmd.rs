//! `ringdaq top`: a live view of the pipeline in the terminal, refreshed every second: the stages, the rates with
//! sparklines of the last minute, ring occupancy, the counters and the acquisitions. `q`, Esc or Ctrl-C quits.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Row, Sparkline, Table};
use shm_protocol::messages::{Reply, Request, StageLabel, StatusReport};

/// The rates shown, with their labels.
const RATES: [(&str, &str); 4] = [
    ("datagrams_per_s", "datagrams/s"),
    ("frames_per_s", "frames/s"),
    ("receive_mb_per_s", "MB/s received"),
    ("write_mb_per_s", "MB/s written"),
];

/// Samples kept per rate (one a second).
const HISTORY: usize = 60;

/// What the view shows: the latest status and the history of the rates.
#[derive(Debug, Default)]
pub struct View {
    status: StatusReport,
    history: [VecDeque<u64>; 4],
}

impl View {
    /// Takes a new status report.
    pub fn update(&mut self, s: StatusReport) {
        for (i, (name, _)) in RATES.iter().enumerate() {
            let v = s.rates.iter().find(|(k, _)| k == name).map_or(0.0, |(_, v)| *v);
            let h = &mut self.history[i];
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(v.round() as u64);
        }
        self.status = s;
    }

    /// Draws the view into `frame`.
    pub fn draw(&self, frame: &mut Frame<'_>) {
        let s = &self.status;
        let [head, stages, rates, rings, rest] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(3),
            Constraint::Min(3),
        ])
        .areas(frame.area());
        frame.render_widget(
            Paragraph::new(format!("ringdaq — pid {}, mode {}, up {} s    (q to quit)", s.pid, s.mode, s.uptime_s))
                .style(Style::default().add_modifier(Modifier::BOLD)),
            head,
        );
        let rows = s.stages.iter().map(|st| {
            let color = if st.state == StageLabel::Running { Color::Green } else { Color::Yellow };
            Row::new(vec![
                st.name.clone(),
                st.state.to_string(),
                st.pid.to_string(),
                format!("{} s", st.uptime_s),
                st.restarts.to_string(),
                st.last_exit.clone().unwrap_or_default(),
            ])
            .style(Style::default().fg(color))
        });
        let table = Table::new(
            rows,
            [
                Constraint::Length(10),
                Constraint::Length(22),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(vec!["stage", "state", "pid", "up", "restarts", "last exit"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::TOP).title("stages"));
        frame.render_widget(table, stages);
        let cols = Layout::horizontal([Constraint::Ratio(1, 4); 4]).split(rates);
        for (i, (name, label)) in RATES.iter().enumerate() {
            let now = s.rates.iter().find(|(k, _)| k == name).map_or(0.0, |(_, v)| *v);
            let spark = Sparkline::default()
                .block(Block::default().borders(Borders::ALL).title(format!("{now:.1} {label}")))
                .data(self.history[i].iter().copied())
                .style(Style::default().fg(Color::Cyan));
            frame.render_widget(spark, cols[i]);
        }
        let [block_ring, frame_ring] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(rings);
        ring_gauge(frame, block_ring, "block ring", s.block_ring_used, s.block_ring_slots);
        ring_gauge(frame, frame_ring, "frame ring", s.frame_ring_used, s.frame_ring_slots);
        let [counters, acquisitions] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(rest);
        let lines: Vec<Line<'_>> =
            s.counters.iter().filter(|(_, v)| *v != 0).map(|(k, v)| Line::from(format!("{k:<30} {v}"))).collect();
        frame.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("counters")),
            counters,
        );
        let lines: Vec<Line<'_>> = s
            .acquisitions
            .iter()
            .rev()
            .map(|a| {
                Line::from(format!(
                    "{}: {} {}/{} written ({} complete){}",
                    a.id,
                    a.state,
                    a.written,
                    a.frames,
                    a.complete,
                    a.error.as_deref().map(|e| format!(" — {e}")).unwrap_or_default()
                ))
            })
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("acquisitions")),
            acquisitions,
        );
    }
}

fn ring_gauge(frame: &mut Frame<'_>, area: Rect, name: &str, used: u64, slots: u64) {
    let ratio = if slots == 0 { 0.0 } else { (used as f64 / slots as f64).clamp(0.0, 1.0) };
    let color = if ratio > 0.8 { Color::Red } else { Color::Green };
    frame.render_widget(
        Gauge::default()
            .block(Block::default().borders(Borders::ALL).title(name.to_string()))
            .gauge_style(Style::default().fg(color))
            .ratio(ratio)
            .label(format!("{used}/{slots} slots in use")),
        area,
    );
}

fn fetch(conn: &mut shm_protocol::Connection) -> anyhow::Result<StatusReport> {
    match crate::client::call(conn, Request::Status)? {
        Reply::Status(s) => Ok(*s),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

/// `ringdaq top`: the live view until `q`; with `once`, one frame rendered as text to stdout (for scripts and
/// terminals without a TUI), `width` × `height` characters.
pub fn run(runtime_dir: &Path, once: bool, width: u16, height: u16) -> anyhow::Result<()> {
    let mut conn = crate::client::connect(runtime_dir)?;
    let mut view = View::default();
    if once {
        // Two samples a second apart, so that the rates are filled.
        view.update(fetch(&mut conn)?);
        std::thread::sleep(Duration::from_millis(1100));
        view.update(fetch(&mut conn)?);
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))?;
        term.draw(|f| view.draw(f))?;
        let buf = term.backend().buffer();
        let mut out = String::new();
        for y in 0..buf.area.height {
            let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        use std::io::Write;
        std::io::stdout().lock().write_all(out.as_bytes())?;
        return Ok(());
    }
    ratatui::run(|term| -> anyhow::Result<()> {
        let mut next = Instant::now();
        // Since when the supervisor has not answered: a successor that adopts the pipeline is reconnected to.
        let mut lost: Option<Instant> = None;
        loop {
            if Instant::now() >= next {
                match fetch(&mut conn) {
                    Ok(s) => {
                        view.update(s);
                        lost = None;
                    }
                    Err(e) => {
                        let since = *lost.get_or_insert_with(Instant::now);
                        let sock = crate::config::control_socket(runtime_dir);
                        if !sock.exists() || since.elapsed() > crate::client::RECONNECT_WAIT {
                            return Err(e);
                        }
                        if let Ok(c) = crate::client::connect(runtime_dir) {
                            conn = c;
                        }
                    }
                }
                term.draw(|f| view.draw(f))?;
                next = Instant::now() + Duration::from_secs(1);
            }
            if event::poll(next.saturating_duration_since(Instant::now()))?
                && let Event::Key(k) = event::read()?
                && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return Ok(());
            }
        }
    })
}
