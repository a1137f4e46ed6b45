//! The pictures decode as PNG of the promised size, whatever the data (none included).

use super::*;

/// Decodes `bytes` and returns the picture's size.
fn size_of(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut pixels).expect("the image data decodes");
    assert!(pixels.iter().any(|&p| p < 128), "something dark was drawn (text, lines)");
    (info.width, info.height)
}

const DAY_MS: i64 = 86_400_000;
const DEC_1: i64 = 1_796_083_200_000;

fn curve(title: &str, steps: u64, evaluated: &[u64]) -> Curve {
    Curve {
        title: title.into(),
        points: (1..=steps)
            .map(|s| CurvePoint {
                step: s,
                train_loss: 5.0 / (1.0 + s as f64 / 10.0) + 1.0,
                val_bpb: evaluated.contains(&s).then(|| 3.0 / (1.0 + s as f64 / 20.0) + 1.2),
            })
            .collect(),
    }
}

fn guild_with_runs() -> GuildFigures {
    GuildFigures {
        title: "mynah · guild 42".into(),
        runs: (0..5)
            .map(|i| RunFigure {
                id: i + 1,
                finished_ms: DEC_1 + i * DAY_MS / 3,
                val_bpb: 2.4 - i as f64 * 0.15,
            })
            .collect(),
        curve: Some(curve("Run 5 (succeeded)", 40, &[8, 16, 24, 32, 40])),
        days: (0..30)
            .map(|d| DayCount { day: DEC_1 / DAY_MS - 30 + d, messages: (d as u64 * 7) % 45 })
            .collect(),
    }
}

#[test]
fn an_empty_guild_gets_a_picture_that_says_so() {
    let bytes = guild_png(&GuildFigures { title: "mynah · guild 1".into(), ..Default::default() }).unwrap();
    assert_eq!(size_of(&bytes), GUILD_SIZE);
}

#[test]
fn a_guild_with_runs_gets_its_three_charts() {
    let bytes = guild_png(&guild_with_runs()).unwrap();
    assert_eq!(size_of(&bytes), GUILD_SIZE);
}

#[test]
fn a_running_run_with_no_evaluation_yet_is_drawn() {
    let figures = GuildFigures { curve: Some(curve("Run 6 (running)", 7, &[])), ..guild_with_runs() };
    assert_eq!(size_of(&guild_png(&figures).unwrap()), GUILD_SIZE);
    assert_eq!(size_of(&run_png(&curve("Run 6 (running)", 1, &[])).unwrap()), RUN_SIZE);
}

#[test]
fn a_run_curve_is_drawn_even_when_it_has_no_point_or_odd_figures() {
    assert_eq!(size_of(&run_png(&curve("Run 2 (failed)", 0, &[])).unwrap()), RUN_SIZE);
    let odd = Curve {
        title: "Run 3".into(),
        points: vec![
            CurvePoint { step: 5, train_loss: f64::NAN, val_bpb: Some(2.0) },
            CurvePoint { step: 5, train_loss: 3.0, val_bpb: Some(f64::INFINITY) },
        ],
    };
    assert_eq!(size_of(&run_png(&odd).unwrap()), RUN_SIZE);
    let one_run = GuildFigures {
        runs: vec![RunFigure { id: 1, finished_ms: DEC_1, val_bpb: 2.0 }],
        days: vec![DayCount { day: DEC_1 / DAY_MS, messages: 3 }],
        ..Default::default()
    };
    assert_eq!(size_of(&guild_png(&one_run).unwrap()), GUILD_SIZE);
}

/// Writes the pictures to `$MYNAH_PLOT_DIR` for a look (`MYNAH_PLOT_DIR=/tmp cargo test --lib plot`).
#[test]
fn pictures_can_be_written_for_a_look() {
    let Ok(dir) = std::env::var("MYNAH_PLOT_DIR") else { return };
    let dir = std::path::Path::new(&dir);
    std::fs::write(dir.join("guild.png"), guild_png(&guild_with_runs()).unwrap()).unwrap();
    std::fs::write(dir.join("empty.png"), guild_png(&GuildFigures::default()).unwrap()).unwrap();
    std::fs::write(
        dir.join("run.png"),
        run_png(&curve("Run 5 (succeeded)", 40, &[8, 16, 24, 32, 40])).unwrap(),
    )
    .unwrap();
}
