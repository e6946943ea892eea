//! A percentile plot of a report's series (SVG or PNG, drawn with plotters): x is the percentile on a "nines" scale (50, 90, 99, 99.9,
//! 99.99, max), y the latency in µs on a log scale, one line per series.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::Report;

/// Why a plot was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The compiled-in font was refused.
    #[error("the plot font does not load")]
    Font,
    /// The file name asks for a format other than SVG or PNG.
    #[error("{}: plots are written as .svg or .png", path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// Drawing or writing the file failed.
    #[error("{}: {source}", path.display())]
    Draw {
        /// The file.
        path: PathBuf,
        /// The drawing backend's error (its type depends on the format).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Position of quantile `q` on the nines scale: 0.9 → 1, 0.99 → 2, …; the median at 0, the maximum one step past
/// 99.99 %.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        5.0
    } else if q <= 0.5 {
        0.0
    } else {
        -(1.0 - q).log10()
    }
}

/// Ten, one per series of the largest chart (a fan-out's ticks and chat of every side) with room to spare: with
/// six, two of its series shared a colour.
const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// The font every chart uses, compiled in so plots need no system font (licence: lab/assets/).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

const SIZE: (u32, u32) = (900, 560);

/// Writes the plot as SVG or PNG, by `path`'s extension, with `y_desc` naming what the latencies are (a round
/// trip, or one way for a fan-out).
pub fn write_plot(report: &Report, title: &str, y_desc: &str, path: &Path) -> Result<(), PlotError> {
    register_font()?;
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => draw(report, (title, y_desc), SVGBackend::new(path, SIZE).into_drawing_area()),
        Some("png") => draw(report, (title, y_desc), BitMapBackend::new(path, SIZE).into_drawing_area()),
        _ => return Err(PlotError::Format { path: path.to_owned() }),
    }
    .map_err(|source| PlotError::Draw { path: path.to_owned(), source })
}

type DrawError = Box<dyn std::error::Error + Send + Sync>;

fn draw<DB: DrawingBackend>(
    report: &Report,
    (title, y_desc): (&str, &str),
    root: DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    let values = || report.series.iter().flat_map(|s| s.curve.iter().map(|p| p.1));
    let max_us = values().max().unwrap_or(1).max(10) as f64;
    let min_us = (values().min().unwrap_or(1).max(1) as f64 / 1.5).max(1.0);
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| -> DrawError { Box::new(e) };
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.1f64..5.1f64, (min_us..(max_us * 1.5)).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc(y_desc)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "50".into(),
            1 => "90".into(),
            2 => "99".into(),
            3 => "99.9".into(),
            4 => "99.99".into(),
            5 => "max".into(),
            _ => String::new(),
        })
        .x_labels(6)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, series) in report.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = series.curve.iter().map(|&(q, us)| (nines(q), us.max(1) as f64)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(series.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
