//! Throughput and latency percentiles over time, one sample per second, as SVG or PNG.
//!
//! Text needs a font. plotters is built without font-kit (no fontconfig dependency); its
//! `ab_glyph` backend draws text with a font file read here at run time: `$LOADGEN_FONT`, or
//! the first common sans-serif font found (DejaVu, Liberation, Noto, FreeSans). On a machine
//! without any of them the chart is still drawn, without titles, labels or legend, and a
//! warning says so.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::SecondSample;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// A latency curve: its name, colour, and how to read it from a sample.
type Percentile = (&'static str, RGBColor, fn(&SecondSample) -> f64);

const SIZE: (u32, u32) = (1100, 760);

/// Registers a font as "sans-serif" once per process. Returns whether text can be drawn.
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = std::env::var("LOADGEN_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps a 'static reference; one font per process, so leak it.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws `timeline` to `path` (`.svg` or `.png`).
pub fn draw(path: &Path, title: &str, timeline: &[SecondSample]) -> Result<(), String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let text = font();
    if !text {
        eprintln!(
            "loadgen: warning: no font found (set LOADGEN_FONT=/path/to/font.ttf); the plot has no text"
        );
    }
    match ext.as_str() {
        "svg" => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            charts(&root, title, timeline, text)?;
            root.present().map_err(|e| e.to_string())
        }
        "png" => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            charts(&root, title, timeline, text)?;
            root.present().map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "--plot {}: name a .svg or .png file",
            path.display()
        )),
    }
}

fn charts<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    tl: &[SecondSample],
    text: bool,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let area = if text {
        root.titled(title, ("sans-serif", 18)).map_err(err)?
    } else {
        root.clone()
    };
    let (top, bottom) = area.split_vertically(SIZE.1 as i32 * 2 / 5);
    let x_end = tl.last().map(|s| s.t_s + 1).unwrap_or(1) as f64;

    // Throughput.
    let ops_max = tl.iter().map(|s| s.ops).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut b = ChartBuilder::on(&top);
    b.margin(12);
    if text {
        b.caption("throughput (ops/s, per second)", ("sans-serif", 15))
            .x_label_area_size(30)
            .y_label_area_size(80);
    }
    let mut c = b
        .build_cartesian_2d(0f64..x_end, 0f64..ops_max)
        .map_err(err)?;
    let mut mesh = c.configure_mesh();
    if text {
        mesh.x_desc("seconds")
            .y_label_formatter(&|v| format!("{v:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    c.draw_series(LineSeries::new(
        tl.iter().map(|s| (s.t_s as f64 + 0.5, s.ops as f64)),
        BLUE.stroke_width(2),
    ))
    .map_err(err)?;

    // Latency percentiles, log scale: p99.9 is often orders above p50.
    let lo = tl
        .iter()
        .map(|s| s.p50_us)
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min);
    let lo = if lo == f64::MAX { 1.0 } else { lo / 2.0 };
    let hi = tl.iter().map(|s| s.max_us).fold(lo * 10.0, f64::max) * 1.5;
    let mut b = ChartBuilder::on(&bottom);
    b.margin(12);
    if text {
        b.caption("latency (us, per second, log scale)", ("sans-serif", 15))
            .x_label_area_size(30)
            .y_label_area_size(80);
    }
    let mut c = b
        .build_cartesian_2d(0f64..x_end, (lo..hi).log_scale())
        .map_err(err)?;
    let mut mesh = c.configure_mesh();
    if text {
        mesh.x_desc("seconds")
            .y_label_formatter(&|v| format!("{v:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    let series: [Percentile; 5] = [
        ("p50", GREEN, |s| s.p50_us),
        ("p90", CYAN, |s| s.p90_us),
        ("p99", MAGENTA, |s| s.p99_us),
        ("p99.9", RED, |s| s.p999_us),
        ("max", BLACK, |s| s.max_us),
    ];
    for (name, color, f) in series {
        let points = tl
            .iter()
            .filter(|s| f(s) > 0.0)
            .map(move |s| (s.t_s as f64 + 0.5, f(s)));
        let drawn = c
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?;
        if text {
            drawn.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        }
    }
    if text {
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}
