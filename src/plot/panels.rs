//! The charts the pictures are made of: runs over time, one run's loss curve, messages per day,
//! and the panel that says there is nothing to show yet.

use chrono::DateTime;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Area, Curve, DayCount, PlotError, RunFigure, FAMILY, MAX_DAYS};

pub(super) const INK: RGBColor = RGBColor(40, 40, 48);
const MUTED: RGBColor = RGBColor(120, 120, 130);
const GRID: RGBColor = RGBColor(232, 232, 236);
const GRID_BOLD: RGBColor = RGBColor(210, 210, 216);
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(214, 39, 40);
const BARS: RGBColor = RGBColor(44, 160, 44);

const HOUR_MS: f64 = 3_600_000.0;

/// Validation bits/byte of the guild's recent runs by when they ended.
pub(super) fn runs(area: &Area<'_>, runs: &[RunFigure]) -> Result<(), PlotError> {
    const TITLE: &str = "Validation bits/byte of recent runs (lower is better)";
    let mut runs: Vec<RunFigure> = runs.iter().copied().filter(|r| r.val_bpb.is_finite()).collect();
    if runs.is_empty() {
        return empty(area, TITLE, "No finished runs yet");
    }
    runs.sort_by_key(|r| r.finished_ms);
    // Hours since 1970 on the axis: its ticks then fall on whole hours.
    let hours = |r: &RunFigure| r.finished_ms as f64 / HOUR_MS;
    let x = padded(&runs.iter().map(hours).collect::<Vec<_>>(), 0.25);
    let y = padded(&runs.iter().map(|r| r.val_bpb).collect::<Vec<_>>(), 0.05);
    // Room above the highest point for its name.
    let y = y.start..y.end + (y.end - y.start) * 0.08;
    let span = x.end - x.start;
    let mut chart = chart(area, TITLE, false).build_cartesian_2d(x, y)?;
    let label = |h: &f64| time_label(*h, span);
    mesh(&mut chart, "run finished (UTC)", "bits/byte", &label, &|v| format!("{v:.2}"))?;
    let points = runs.iter().map(|r| (hours(r), r.val_bpb));
    chart.draw_series(LineSeries::new(points.clone(), VAL.stroke_width(2)))?;
    chart.draw_series(points.clone().map(|p| Circle::new(p, 4, VAL.filled())))?;
    if runs.len() <= 12 {
        let style = (FAMILY, 13).into_font().color(&MUTED).pos(Pos::new(HPos::Center, VPos::Bottom));
        // Each point named by its run, just above it.
        chart.draw_series(runs.iter().map(|r| {
            EmptyElement::at((hours(r), r.val_bpb))
                + Text::new(format!("run {}", r.id), (0, -7), style.clone())
        }))?;
    }
    Ok(())
}

/// A run's curve: training loss (left axis) and validation bits/byte (right axis) by step.
pub(super) fn curve(area: &Area<'_>, curve: &Curve) -> Result<(), PlotError> {
    let title = format!("{}: training loss and validation", curve.title);
    let train: Vec<(f64, f64)> = curve
        .points
        .iter()
        .filter(|p| p.train_loss.is_finite())
        .map(|p| (p.step as f64, p.train_loss))
        .collect();
    let val: Vec<(f64, f64)> = curve
        .points
        .iter()
        .filter_map(|p| p.val_bpb.filter(|v| v.is_finite()).map(|v| (p.step as f64, v)))
        .collect();
    if train.is_empty() && val.is_empty() {
        return empty(area, &title, "No steps recorded yet");
    }
    let steps: Vec<f64> = train.iter().chain(&val).map(|p| p.0).collect();
    let x = padded(&steps, 1.0);
    let x = x.start.max(0.0)..x.end;
    let y_train = padded(&train.iter().map(|p| p.1).collect::<Vec<_>>(), 0.1);
    let y_val = padded(&val.iter().map(|p| p.1).collect::<Vec<_>>(), 0.05);
    let mut chart =
        chart(area, &title, true).build_cartesian_2d(x.clone(), y_train)?.set_secondary_coord(x, y_val);
    let whole = |v: &f64| format!("{v:.0}");
    mesh(&mut chart, "training step", "training loss (nats/token)", &whole, &|v| format!("{v:.1}"))?;
    chart
        .configure_secondary_axes()
        .y_desc("validation (bits/byte)")
        .axis_desc_style((FAMILY, 15).into_font().color(&VAL))
        .label_style((FAMILY, 13).into_font().color(&VAL))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()?;
    if !train.is_empty() {
        chart
            .draw_series(LineSeries::new(train, TRAIN.stroke_width(2)))?
            .label("training loss (left)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TRAIN.stroke_width(2)));
    }
    if !val.is_empty() {
        chart
            .draw_secondary_series(LineSeries::new(val.clone(), VAL.stroke_width(2)))?
            .label("validation bits/byte (right)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], VAL.stroke_width(2)));
        chart.draw_secondary_series(val.into_iter().map(|p| Circle::new(p, 4, VAL.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 13).into_font().color(&INK))
        .background_style(WHITE.mix(0.85))
        .border_style(GRID_BOLD)
        .draw()?;
    Ok(())
}

/// Messages per UTC day, as bars, for the newest [`MAX_DAYS`] days.
pub(super) fn per_day(area: &Area<'_>, days: &[DayCount]) -> Result<(), PlotError> {
    const TITLE: &str = "Messages collected per day";
    let mut days: Vec<DayCount> = days.iter().copied().filter(|d| d.messages > 0).collect();
    days.sort_by_key(|d| d.day);
    let Some(last) = days.last().map(|d| d.day) else {
        return empty(area, TITLE, "No messages collected yet");
    };
    days.retain(|d| d.day > last - MAX_DAYS as i64);
    let first = days.first().map_or(last, |d| d.day);
    let max = days.iter().map(|d| d.messages).max().unwrap_or(1) as f64;
    let x = (first as f64 - 0.6)..(last as f64 + 0.6);
    let mut chart = chart(area, TITLE, false).build_cartesian_2d(x, 0.0..max * 1.12)?;
    let label = |d: &f64| day_label(d.round() as i64);
    mesh(&mut chart, "day (UTC)", "messages/day", &label, &|v| format!("{v:.0}"))?;
    let width = if days.len() > 30 { 0.45 } else { 0.38 };
    chart.draw_series(days.iter().map(|d| {
        let x = d.day as f64;
        Rectangle::new([(x - width, 0.0), (x + width, d.messages as f64)], BARS.mix(0.85).filled())
    }))?;
    if days.len() <= 20 {
        let style = (FAMILY, 12).into_font().color(&MUTED).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(days.iter().map(|d| {
                Text::new(d.messages.to_string(), (d.day as f64, d.messages as f64), style.clone())
            }))?;
    }
    Ok(())
}

/// A panel with its title and a line saying why there is no chart.
pub(super) fn empty(area: &Area<'_>, title: &str, message: &str) -> Result<(), PlotError> {
    let inner = area.margin(8, 8, 16, 16);
    let (w, h) = inner.dim_in_pixel();
    inner.draw(&Rectangle::new([(0, 0), (w as i32 - 1, h as i32 - 1)], GRID_BOLD.stroke_width(1)))?;
    inner.draw_text(title, &(FAMILY, 20).into_font().color(&INK), (12, 10))?;
    let style = (FAMILY, 18).into_font().color(&MUTED).pos(Pos::new(HPos::Center, VPos::Center));
    inner.draw_text(message, &style, (w as i32 / 2, h as i32 / 2))?;
    Ok(())
}

type Builder<'a, 'b> = ChartBuilder<'a, 'b, BitMapBackend<'b>>;

/// A chart builder with the common title and label areas (`right`: room for a second axis).
fn chart<'a, 'b>(area: &'a Area<'b>, title: &str, right: bool) -> Builder<'a, 'b> {
    let mut b = ChartBuilder::on(area);
    b.caption(title, (FAMILY, 20).into_font().color(&INK))
        .margin_top(6)
        .margin_left(12)
        .margin_right(if right { 6 } else { 24 })
        .margin_bottom(6)
        .x_label_area_size(44)
        .y_label_area_size(72);
    if right {
        b.right_y_label_area_size(72);
    }
    b
}

/// Grid, tick labels and axis names in the common style.
fn mesh(
    chart: &mut ChartContext<
        '_,
        BitMapBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    x_desc: &str,
    y_desc: &str,
    x_label: &dyn Fn(&f64) -> String,
    y_label: &dyn Fn(&f64) -> String,
) -> Result<(), PlotError> {
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(x_label)
        .y_label_formatter(y_label)
        .axis_desc_style((FAMILY, 15).into_font().color(&INK))
        .label_style((FAMILY, 13).into_font().color(&INK))
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .axis_style(MUTED)
        .draw()?;
    Ok(())
}

/// `values`' range widened by a tenth on each side (and by `min_half` around a single value).
fn padded(values: &[f64], min_half: f64) -> std::ops::Range<f64> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.1).max(min_half);
    (lo - pad)..(hi + pad)
}

/// An hours-since-1970 tick: the date, with the time when the axis spans under three days.
fn time_label(hours: f64, span_hours: f64) -> String {
    let Some(t) = DateTime::from_timestamp_millis((hours * HOUR_MS).round() as i64) else {
        return String::new();
    };
    if span_hours < 72.0 {
        t.format("%Y-%m-%d %H:%M").to_string()
    } else {
        t.format("%Y-%m-%d").to_string()
    }
}

/// A day-number tick as a date.
fn day_label(day: i64) -> String {
    DateTime::from_timestamp(day * 86_400, 0).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}
