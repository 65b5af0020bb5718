//! Remembers where the last panic on this thread happened, for the error queue.
//!
//! `catch_unwind` hands back the payload but not the location, which only the panic hook
//! sees. The hook runs on the panicking thread, and the pump catches the unwind on that
//! same thread within the same poll, so a thread-local carries it across.

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the hook once per process, keeping whatever hook was there before.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            LAST.with(|last| *last.borrow_mut() = location);
            previous(info);
        }));
    });
}

/// The location of the last panic on this thread, cleared as it is read.
pub(crate) fn take() -> Option<String> {
    LAST.with(|last| last.borrow_mut().take())
}
