//! `closetrace report`'s reader and both renderings, on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = closetrace_core::output::report::Report::read(data) else {
        return;
    };
    let text = report.to_text("fuzz");
    assert!(
        !text.contains('\u{1b}'),
        "an escape reached the text report"
    );
    let html = closetrace_core::output::report::render_html(&report, "fuzz");
    assert!(!html.contains("<script"), "markup reached the HTML report");
});
