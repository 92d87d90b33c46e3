//! `bench-plot`: draws the Envoy figures `make bench` writes (`build/bench.json`, from
//! `test-harness/e2e/bench_envoy.py`) as `build/bench.svg`: requests per second per configuration
//! (bars: the median; dots: each round), and the p50 and p99 latency per configuration.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

/// Draws build/bench.json (make bench's requests/s and latency through Envoy) as an SVG.
#[derive(Debug, Parser)]
struct Args {
    /// The figures bench_envoy.py wrote.
    #[arg(long, default_value = "build/bench.json")]
    input: PathBuf,
    /// Where the SVG goes.
    #[arg(long, default_value = "build/bench.svg")]
    output: PathBuf,
}

/// What bench_envoy.py writes; fields it writes that the plot does not draw are ignored.
#[derive(Debug, Deserialize)]
struct Report {
    setup: Setup,
    configurations: Vec<Configuration>,
}

#[derive(Debug, Deserialize)]
struct Setup {
    duration_s: f64,
    connections: u32,
    rounds: u32,
    pinned: bool,
}

#[derive(Debug, Deserialize)]
struct Configuration {
    name: String,
    median: Figures,
    rounds: Vec<Figures>,
    /// The configuration this one is labelled against (a playbook-guard build's own floor);
    /// none: the one named "floor", if any.
    #[serde(default)]
    floor: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, thiserror::Error)]
enum PlotError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a bench report as bench_envoy.py writes it: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {field}: {problem}")]
    Invalid { path: PathBuf, field: String, problem: &'static str },
    #[error("cannot draw {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

fn read_report(path: &Path) -> Result<Report, PlotError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Read { path: path.to_owned(), source })?;
    let report: Report =
        serde_json::from_str(&text).map_err(|source| PlotError::Parse { path: path.to_owned(), source })?;
    let invalid = |field: String, problem| PlotError::Invalid { path: path.to_owned(), field, problem };
    if report.configurations.is_empty() {
        return Err(invalid("configurations".into(), "empty: nothing to draw"));
    }
    for (i, config) in report.configurations.iter().enumerate() {
        let figures = std::iter::once(("median".to_owned(), config.median))
            .chain(config.rounds.iter().enumerate().map(|(r, f)| (format!("rounds[{r}]"), *f)));
        for (at, f) in figures {
            if ![f.rps, f.p50_ms, f.p99_ms].iter().all(|v| v.is_finite() && *v >= 0.0) {
                return Err(invalid(format!("configurations[{i}].{at}"), "figures must be finite and not negative"));
            }
        }
    }
    Ok(report)
}

/// Bar colours, one per configuration in the report's order (no filter, jwt_authn + rbac, the
/// Wasm floor, playbook-guard, playbook-guard windowed, the module floor, playbook-guard native).
const COLOURS: [RGBColor; 7] = [
    RGBColor(150, 150, 150),
    RGBColor(66, 133, 244),
    RGBColor(52, 168, 83),
    RGBColor(234, 120, 20),
    RGBColor(246, 178, 107),
    RGBColor(129, 201, 149),
    RGBColor(165, 60, 10),
];

fn colour(i: usize) -> RGBColor {
    COLOURS.get(i).copied().unwrap_or(BLACK)
}

fn draw(report: &Report, path: &Path) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw { path: path.to_owned(), message: e.to_string() };
    let root = SVGBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let s = &report.setup;
    let title = format!(
        "Envoy --concurrency 1, wrk -t1 -c{} -d{}s, {}; medians of {} rounds",
        s.connections,
        s.duration_s,
        if s.pinned { "pinned to a core each" } else { "not pinned" },
        s.rounds
    );
    let root = root.titled(&title, ("sans-serif", 16)).map_err(|e| fail(&e))?;
    let (left, right) = root.split_horizontally(500);
    throughput(report, &left).map_err(|e| fail(&e))?;
    latency(report, &right).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn name_of(configs: &[Configuration]) -> impl Fn(&SegmentValue<usize>) -> String + '_ {
    |v| match v {
        SegmentValue::CenterOf(i) => configs.get(*i).map(|c| c.name.clone()).unwrap_or_default(),
        _ => String::new(),
    }
}

fn throughput(report: &Report, area: &Area) -> DrawResult {
    let configs = &report.configurations;
    let top = configs.iter().flat_map(|c| c.rounds.iter().chain([&c.median])).map(|f| f.rps).fold(1.0, f64::max);
    let (mut chart, width) = slot_chart(area, configs, "requests/s (bar: median, dots: rounds)", top, 0)?;
    chart.draw_series(
        configs.iter().enumerate().map(|(i, c)| bar(i, c.median.rps, colour(i).filled(), width / 6, width / 6)),
    )?;
    chart.draw_series(
        configs
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.rounds.iter().map(move |r| Circle::new((SegmentValue::CenterOf(i), r.rps), 3, BLACK))),
    )?;
    // The ratio the issue's goal is stated in: each configuration against its floor, when there is one.
    let rps_of = |name: &str| configs.iter().find(|c| c.name == name).map(|c| c.median.rps).filter(|f| *f > 0.0);
    let label = TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(configs.iter().enumerate().map(|(i, c)| {
        let floor = c.floor.as_deref().unwrap_or("floor");
        let ratio = rps_of(floor).map(|f| format!(" ({:.2} {floor})", c.median.rps / f)).unwrap_or_default();
        // Above the bar and its dots.
        EmptyElement::at((SegmentValue::CenterOf(i), c.median.rps))
            + Text::new(format!("{:.0}{ratio}", c.median.rps), (0, -6), label.clone())
    }))?;
    Ok(())
}

fn latency(report: &Report, area: &Area) -> DrawResult {
    let configs = &report.configurations;
    let top = configs.iter().map(|c| c.median.p99_ms.max(c.median.p50_ms)).fold(0.01, f64::max);
    let (mut chart, width) = slot_chart(area, configs, "latency, ms (median of rounds; left p50, right p99)", top, 1)?;
    for p50 in [true, false] {
        let pick = |f: &Figures| if p50 { f.p50_ms } else { f.p99_ms };
        let (l, r) = if p50 { (width / 8, width / 2) } else { (width / 2, width / 8) };
        chart.draw_series(configs.iter().enumerate().map(|(i, c)| {
            let style = if p50 { colour(i).mix(0.55).filled() } else { colour(i).filled() };
            bar(i, pick(&c.median), style, l, r)
        }))?;
        // Each value beside the slot's centre, on its own bar's side.
        let side = if p50 { HPos::Right } else { HPos::Left };
        let label = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(side, VPos::Bottom));
        chart.draw_series(configs.iter().enumerate().map(|(i, c)| {
            let value = pick(&c.median);
            Text::new(format!("{value:.2}"), (SegmentValue::CenterOf(i), value), label.clone())
        }))?;
    }
    Ok(())
}

type SlotChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<
        plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize>,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// A chart with one slot per configuration (named under it) and values from 0 to a little above
/// `top`, its mesh drawn; and the width of a slot in pixels.
fn slot_chart<'a, 'b>(
    area: &'a Area<'b>,
    configs: &[Configuration],
    caption: &str,
    top: f64,
    decimals: usize,
) -> Result<(SlotChart<'a, 'b>, u32), DrawingAreaErrorKind<std::io::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(slots(configs), 0.0..top * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(configs.len())
        .x_label_formatter(&name_of(configs))
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .draw()?;
    let width = slot_width(chart.plotting_area().dim_in_pixel().0, configs.len());
    Ok((chart, width))
}

/// A bar in slot `i` up to `value`, narrowed by `left` and `right` pixels.
fn bar(i: usize, value: f64, style: ShapeStyle, left: u32, right: u32) -> Rectangle<(SegmentValue<usize>, f64)> {
    let mut bar = Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), value)], style);
    bar.set_margin(0, 0, left, right);
    bar
}

/// One slot per configuration on the x axis (an integer range's segments include its end).
fn slots(
    configs: &[Configuration],
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize> {
    (0..configs.len().saturating_sub(1)).into_segmented()
}

/// The pixel width of one configuration's slot, for the margins that make bars narrower than it.
fn slot_width(plot_width: u32, slots: usize) -> u32 {
    plot_width / u32::try_from(slots.max(1)).unwrap_or(1)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match read_report(&args.input).and_then(|report| draw(&report, &args.output)) {
        Ok(()) => {
            println!("wrote {}", args.output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-plot: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of its own under the system temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!("bench-plot-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn figures(rps: f64) -> serde_json::Value {
        serde_json::json!({"rps": rps, "p50_ms": 0.7, "p99_ms": 4.8, "requests": 1000})
    }

    /// As bench_envoy.py writes it (fields the plot does not draw included).
    fn report(names: &[&str]) -> String {
        let configurations: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let rps = 1000.0 * (i as f64 + 1.0);
                serde_json::json!({"name": name, "median": figures(rps), "rounds": [figures(rps - 10.0), figures(rps)]})
            })
            .collect();
        serde_json::json!({
            "setup": {"duration_s": 8, "connections": 16, "rounds": 2, "pinned": true, "path": "/x",
                      "envoy_concurrency": 1, "wrk_threads": 1},
            "configurations": configurations,
            "ratios": {"guard_over_floor": 0.5},
        })
        .to_string()
    }

    const FOUR: [&str; 4] = ["no filter", "jwt_authn+rbac", "floor", "playbook-guard"];

    #[test]
    fn reads_the_report_bench_envoy_writes() {
        let file = TempFile::new("ok.json", &report(&FOUR));
        let report = read_report(&file.0).unwrap();
        let names: Vec<&str> = report.configurations.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, FOUR);
        assert_eq!(report.configurations[2].median.rps, 3000.0);
        assert_eq!(report.configurations[2].rounds.len(), 2);
        assert!(report.setup.pinned);
    }

    #[test]
    fn a_configuration_is_labelled_against_its_own_floor() {
        let six = [&FOUR[..], &["module floor", "playbook-guard native"]].concat();
        let mut json: serde_json::Value = serde_json::from_str(&report(&six)).unwrap();
        json["configurations"][5]["floor"] = "module floor".into();
        let input = TempFile::new("floors.json", &json.to_string());
        let output = TempFile::new("floors.svg", "");
        draw(&read_report(&input.0).unwrap(), &output.0).unwrap();
        let svg = std::fs::read_to_string(&output.0).unwrap();
        assert!(svg.contains(" module floor)"), "the native build against the module floor");
        assert!(svg.contains(" floor)"), "the others against the Wasm floor");
    }

    #[test]
    fn a_malformed_file_is_a_clear_error() {
        let file = TempFile::new("cut.json", r#"{"setup": {"duration_s": 8,"#);
        let error = read_report(&file.0).unwrap_err();
        assert!(matches!(error, PlotError::Parse { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&file.0.display().to_string()), "names the file: {message}");
        assert!(message.contains("not a bench report") && message.contains("line 1"), "{message}");
    }

    #[test]
    fn a_missing_figure_is_named() {
        let text = report(&FOUR).replace(r#""p99_ms":4.8,"#, "");
        let file = TempFile::new("no-p99.json", &text);
        let message = read_report(&file.0).unwrap_err().to_string();
        assert!(message.contains("missing field `p99_ms`"), "{message}");
    }

    #[test]
    fn nothing_to_draw_or_a_negative_figure_is_an_error_naming_the_field() {
        let file = TempFile::new("empty.json", &report(&[]));
        let message = read_report(&file.0).unwrap_err().to_string();
        assert!(message.contains("configurations: empty"), "{message}");

        let text = report(&FOUR).replacen(r#""rps":990.0"#, r#""rps":-1.0"#, 1);
        let file = TempFile::new("negative.json", &text);
        let message = read_report(&file.0).unwrap_err().to_string();
        assert!(message.contains("configurations[0].rounds[0]"), "{message}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let path = std::env::temp_dir().join(format!("bench-plot-{}-absent.json", std::process::id()));
        let message = read_report(&path).unwrap_err().to_string();
        assert!(message.starts_with(&format!("cannot read {}", path.display())), "{message}");
    }

    #[test]
    fn draws_every_configuration() {
        for names in [&FOUR[..], &FOUR[3..]] {
            let input = TempFile::new("draw.json", &report(names));
            let output = TempFile::new("draw.svg", "");
            draw(&read_report(&input.0).unwrap(), &output.0).unwrap();
            let svg = std::fs::read_to_string(&output.0).unwrap();
            assert!(svg.starts_with("<svg"), "{svg:.100}");
            for name in names {
                assert!(svg.contains(name), "{name} is labelled");
            }
        }
    }
}
