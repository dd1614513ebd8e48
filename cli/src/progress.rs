//! Progress bars for long operator work: position, rate and ETA, drawn on stderr and hidden
//! when stderr is not a terminal (CI logs get the final summary only).

use indicatif::{ProgressBar, ProgressStyle};

pub fn events_bar(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {human_pos}/{human_len} events  {per_sec}  eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}
