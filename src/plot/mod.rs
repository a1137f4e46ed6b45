//! The pictures: a guild's learning at a glance (for `!llmstats` and `mynah stats --plot`) and
//! one run's loss curve (for `/api/ml/runs/{id}/loss.png`), drawn with plotters on a bitmap and
//! encoded as PNG. Pure: figures in, PNG bytes out; the text uses the bundled DejaVu Sans
//! (`assets/fonts/`), never a system font.

mod panels;

use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// The guild picture's size in pixels (three stacked charts under a header).
pub const GUILD_SIZE: (u32, u32) = (900, 900);
/// A run's loss-curve picture's size in pixels.
pub const RUN_SIZE: (u32, u32) = (900, 420);
/// Days shown in the messages-per-day chart at most (the newest ones).
pub const MAX_DAYS: usize = 60;

/// The family name plots ask for; [`font`] registers the bundled font under it.
const FAMILY: &str = "sans-serif";
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the bundled font could not be loaded")]
    Font,
    #[error("drawing failed: {0}")]
    Draw(String),
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        PlotError::Draw(e.to_string())
    }
}

/// One point of a run's loss curve.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub step: u64,
    /// Training loss, nats per token.
    pub train_loss: f64,
    /// Validation bits per byte, where the run evaluated.
    pub val_bpb: Option<f64>,
}

/// A run's loss curve with the words that name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// E.g. "Run 3 (running)".
    pub title: String,
    pub points: Vec<CurvePoint>,
}

/// A finished run's validation figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunFigure {
    pub id: i64,
    /// When it ended, Unix milliseconds.
    pub finished_ms: i64,
    pub val_bpb: f64,
}

/// Messages written on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCount {
    /// Days since 1970-01-01.
    pub day: i64,
    pub messages: u64,
}

/// Everything the guild picture shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuildFigures {
    /// The header line, e.g. "mynah · guild 1234".
    pub title: String,
    /// Recent successful runs, any order.
    pub runs: Vec<RunFigure>,
    /// The running run's curve, or else the latest run's.
    pub curve: Option<Curve>,
    /// Messages per day, any order; days without messages may be left out.
    pub days: Vec<DayCount>,
}

/// The guild picture: validation bits/byte of recent runs over time, the current (or latest)
/// run's curve, and messages collected per day, stacked.
pub fn guild_png(figures: &GuildFigures) -> Result<Vec<u8>, PlotError> {
    render(GUILD_SIZE, |root| {
        let (header, body) = root.split_vertically(40);
        header.draw_text(&figures.title, &(FAMILY, 24).into_font().color(&panels::INK), (16, 10))?;
        let parts = body.split_evenly((3, 1));
        panels::runs(&parts[0], &figures.runs)?;
        match &figures.curve {
            Some(curve) => panels::curve(&parts[1], curve)?,
            None => panels::empty(&parts[1], "Training loss and validation", "No training runs yet")?,
        }
        panels::per_day(&parts[2], &figures.days)
    })
}

/// A run's loss curve: training loss and validation bits/byte by step.
pub fn run_png(curve: &Curve) -> Result<Vec<u8>, PlotError> {
    render(RUN_SIZE, |root| panels::curve(root, curve))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws on a white bitmap of `size` and encodes it as PNG.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), PlotError>,
) -> Result<Vec<u8>, PlotError> {
    font()?;
    let (w, h) = size;
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(png_bytes)
}

/// Registers the bundled font with plotters, once per process.
fn font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

#[cfg(test)]
mod tests;
