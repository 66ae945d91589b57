//! Puts each key's owner on the alerts and revocation requests about it,
//! where outputs leave the engine and before any sink sees them. The engine
//! itself knows no owners: the book comes from a file or a topic that
//! changes on its own schedule, so it is applied at the edge.

use super::Output;
use crate::owners::OwnerBook;

/// Puts the key's owner on an alert or a revocation request that does not
/// carry one yet. Digests, keys without an entry and alerts of the view
/// across keys (about a source calling with many keys, each with its own
/// owner) are left alone.
pub fn attach_owner(book: &OwnerBook, output: &mut Output) {
    let (fingerprint, slot) = match output {
        Output::Alert(alert) if !alert.keys.is_empty() => return,
        Output::Alert(alert) => (&alert.key_fingerprint, &mut alert.owner),
        Output::Revocation(request) => (&request.key_fingerprint, &mut request.owner),
        Output::Digest(_) => return,
    };
    if slot.is_none() {
        *slot = book.get(fingerprint).cloned();
    }
}

/// [`attach_owner`] on every output.
pub fn attach_owners(book: &OwnerBook, outputs: &mut [Output]) {
    if book.is_empty() {
        return;
    }
    for output in outputs {
        attach_owner(book, output);
    }
}
