//! Packing documents into fixed context windows, keeping where every token came from.
//!
//! Documents are tokenized and joined with the end-of-text token, as SAELens packs its data;
//! each window starts with BOS and holds `context - 1` corpus tokens. Packing restarts at
//! every corpus source, so that appending a corpus B to an indexed corpus A gives the same
//! windows as indexing [A, B] together. A source's last window may be shorter.

use serde::{Deserialize, Serialize};

/// Where a run of window tokens comes from: document (ordinal in the corpus) and the token
/// offset in that document of the window position `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub position: u32,
    pub document: u64,
    pub offset: u32,
}

/// One context window: BOS at position 0, then corpus tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Ordinal of the window in the whole corpus (all sources).
    pub index: u64,
    pub tokens: Vec<u32>,
    pub segments: Vec<Segment>,
}

impl Window {
    /// Document and token offset of the token at `position` (BOS maps to its first token's).
    pub fn origin(&self, position: usize) -> (u64, u32) {
        let position = position.max(1) as u32;
        let segment = self.segments.iter().rev().find(|s| s.position <= position).or(self.segments.first());
        match segment {
            Some(s) => (s.document, s.offset + (position - s.position)),
            None => (0, 0),
        }
    }
}

/// Cuts a stream of documents into windows.
pub struct WindowPacker {
    context: usize,
    bos: u32,
    separator: u32,
    next_index: u64,
    current: Window,
}

impl WindowPacker {
    pub fn new(context: usize, bos: u32, separator: u32, first_index: u64) -> Self {
        WindowPacker { context, bos, separator, next_index: first_index, current: Self::empty(first_index, bos) }
    }

    fn empty(index: u64, bos: u32) -> Window {
        Window { index, tokens: vec![bos], segments: Vec::new() }
    }

    /// Adds a document's tokens (and a separator) and returns the windows completed by it.
    pub fn push_document(&mut self, document: u64, tokens: &[u32]) -> Vec<Window> {
        let mut done = Vec::new();
        let mut offset = 0usize;
        let total = tokens.len() + 1; // the separator belongs to the document it ends
        while offset < total {
            let room = self.context - self.current.tokens.len();
            let take = room.min(total - offset);
            self.current.segments.push(Segment { position: self.current.tokens.len() as u32, document, offset: offset as u32 });
            for i in offset..offset + take {
                self.current.tokens.push(if i < tokens.len() { tokens[i] } else { self.separator });
            }
            offset += take;
            if self.current.tokens.len() == self.context {
                done.push(self.take_current());
            }
        }
        done
    }

    fn take_current(&mut self) -> Window {
        self.next_index += 1;
        std::mem::replace(&mut self.current, Self::empty(self.next_index, self.bos))
    }

    /// The last, partial window of the source (None when empty).
    pub fn finish(mut self) -> (Option<Window>, u64) {
        let last = (self.current.tokens.len() > 1).then(|| self.take_current());
        (last, self.next_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_with_bos_separators_and_origins() {
        let mut packer = WindowPacker::new(4, 1, 2, 10);
        let mut windows = packer.push_document(0, &[5, 6, 7, 8]);
        windows.extend(packer.push_document(1, &[9]));
        let (last, next) = packer.finish();
        windows.extend(last);
        let tokens: Vec<&[u32]> = windows.iter().map(|w| w.tokens.as_slice()).collect();
        assert_eq!(tokens, vec![&[1, 5, 6, 7][..], &[1, 8, 2, 9], &[1, 2]]);
        assert_eq!(windows.iter().map(|w| w.index).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(next, 13);
        assert_eq!(windows[1].origin(1), (0, 3));
        assert_eq!(windows[1].origin(2), (0, 4)); // the separator ends document 0
        assert_eq!(windows[1].origin(3), (1, 0));
        assert_eq!(windows[2].origin(1), (1, 1));
    }
}
