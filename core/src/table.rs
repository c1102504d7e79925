//! `Table<T, N>`: `N` fixed slots addressed by generation-checked handles.
//!
//! Invariants:
//! - A [`Handle`] names a slot index and the generation the slot had when the value went in.
//!   Removing a value bumps the slot's generation, so every handle to the old value becomes
//!   stale: `get`/`get_mut`/`remove` with it return [`TableError::Stale`], never the value that
//!   reuses the slot later.
//! - A handle crosses the C boundary as a non-zero `u64` ([`Handle::encode`]); any `u64`
//!   decodes to `None` or to a handle that the table checks before use, so a forged or old value
//!   from C is rejected, never misread.
//! - Generations wrap after 2^32 removals of one slot; a handle that old could alias. That is the
//!   documented limit.

use core::fmt;

/// A generation-checked reference to a table slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    /// The slot index.
    pub index: u32,
    /// The slot generation this handle was issued for.
    pub generation: u32,
}

impl Handle {
    /// The handle as a non-zero `u64`: `generation << 32 | (index + 1)`.
    ///
    /// The index is below `u32::MAX` for every table (`N` is far smaller), so `index + 1` does
    /// not wrap; a handle with `index == u32::MAX` (never issued) saturates and never decodes
    /// back to a valid slot of any table.
    #[inline]
    pub const fn encode(self) -> u64 {
        ((self.generation as u64) << 32) | (self.index.saturating_add(1) as u64)
    }

    /// The handle encoded by [`Handle::encode`]; `None` for 0 (or any value whose low half is 0).
    #[inline]
    pub const fn decode(raw: u64) -> Option<Self> {
        let low = raw as u32;
        if low == 0 {
            return None;
        }
        Some(Self {
            index: low - 1,
            generation: (raw >> 32) as u32,
        })
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}/gen{}", self.index, self.generation)
    }
}

/// Why a table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableError {
    /// Every slot is in use.
    Full,
    /// The index is beyond the table's capacity.
    OutOfRange,
    /// The slot is empty or holds a newer value than the handle names.
    Stale,
    /// [`Table::insert_at`]: the slot is already in use.
    Occupied,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "table full",
            Self::OutOfRange => "handle index out of range",
            Self::Stale => "stale handle (object destroyed)",
            Self::Occupied => "slot already in use",
        })
    }
}

impl core::error::Error for TableError {}

#[derive(Clone, Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// `N` slots holding `T`, addressed by [`Handle`]s.
#[derive(Clone, Debug)]
pub struct Table<T, const N: usize> {
    slots: [Slot<T>; N],
    len: usize,
}

impl<T, const N: usize> Default for Table<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Table<T, N> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            slots: core::array::from_fn(|_| Slot {
                generation: 0,
                value: None,
            }),
            len: 0,
        }
    }

    /// The number of values held.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is held.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The capacity `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Puts `value` in the lowest free slot.
    ///
    /// # Errors
    /// [`TableError::Full`], with the value handed back.
    pub fn insert(&mut self, value: T) -> Result<Handle, (TableError, T)> {
        match self.slots.iter().position(|s| s.value.is_none()) {
            Some(index) => self.fill(index, value),
            None => Err((TableError::Full, value)),
        }
    }

    /// Puts `value` in slot `index` (for objects whose id is chosen by the caller).
    ///
    /// # Errors
    /// [`TableError::OutOfRange`] or [`TableError::Occupied`], with the value handed back.
    pub fn insert_at(&mut self, index: usize, value: T) -> Result<Handle, (TableError, T)> {
        match self.slots.get(index) {
            None => Err((TableError::OutOfRange, value)),
            Some(s) if s.value.is_some() => Err((TableError::Occupied, value)),
            Some(_) => self.fill(index, value),
        }
    }

    fn fill(&mut self, index: usize, value: T) -> Result<Handle, (TableError, T)> {
        let Ok(index32) = u32::try_from(index) else {
            return Err((TableError::OutOfRange, value));
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return Err((TableError::OutOfRange, value));
        };
        slot.value = Some(value);
        self.len += 1;
        Ok(Handle {
            index: index32,
            generation: slot.generation,
        })
    }

    fn slot(&self, handle: Handle) -> Result<&Slot<T>, TableError> {
        let slot = self
            .slots
            .get(handle.index as usize)
            .ok_or(TableError::OutOfRange)?;
        if slot.generation != handle.generation || slot.value.is_none() {
            return Err(TableError::Stale);
        }
        Ok(slot)
    }

    /// The value `handle` names.
    ///
    /// # Errors
    /// [`TableError::OutOfRange`] or [`TableError::Stale`].
    pub fn get(&self, handle: Handle) -> Result<&T, TableError> {
        self.slot(handle)?.value.as_ref().ok_or(TableError::Stale)
    }

    /// The value `handle` names, mutably.
    ///
    /// # Errors
    /// [`TableError::OutOfRange`] or [`TableError::Stale`].
    pub fn get_mut(&mut self, handle: Handle) -> Result<&mut T, TableError> {
        self.slot(handle)?;
        let slot = self
            .slots
            .get_mut(handle.index as usize)
            .ok_or(TableError::OutOfRange)?;
        slot.value.as_mut().ok_or(TableError::Stale)
    }

    /// Takes the value out; the slot's generation moves on so `handle` becomes stale.
    ///
    /// # Errors
    /// [`TableError::OutOfRange`] or [`TableError::Stale`].
    pub fn remove(&mut self, handle: Handle) -> Result<T, TableError> {
        self.slot(handle)?;
        let slot = self
            .slots
            .get_mut(handle.index as usize)
            .ok_or(TableError::OutOfRange)?;
        let value = slot.value.take().ok_or(TableError::Stale)?;
        slot.generation = slot.generation.wrapping_add(1);
        self.len -= 1;
        Ok(value)
    }

    /// The live handle of slot `index`, if it holds a value.
    pub fn handle_at(&self, index: usize) -> Option<Handle> {
        let slot = self.slots.get(index)?;
        slot.value.as_ref()?;
        Some(Handle {
            index: u32::try_from(index).ok()?,
            generation: slot.generation,
        })
    }

    /// Every held value with its handle, by slot index.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let value = s.value.as_ref()?;
            Some((
                Handle {
                    index: u32::try_from(i).ok()?,
                    generation: s.generation,
                },
                value,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_stale() {
        let mut t: Table<u32, 2> = Table::new();
        let a = t.insert(10).expect("room");
        let b = t.insert(20).expect("room");
        assert_eq!(t.insert(30).map_err(|e| e.0), Err(TableError::Full));
        assert_eq!(t.get(a), Ok(&10));
        *t.get_mut(b).expect("live") = 21;
        assert_eq!(t.remove(b), Ok(21));
        assert_eq!(t.get(b), Err(TableError::Stale));
        assert_eq!(t.remove(b), Err(TableError::Stale));
        let c = t.insert(30).expect("slot reused");
        assert_eq!(c.index, b.index);
        assert_ne!(c, b);
        assert_eq!(t.get(b), Err(TableError::Stale));
        assert_eq!(t.get(c), Ok(&30));
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.get(Handle {
                index: 2,
                generation: 0
            }),
            Err(TableError::OutOfRange)
        );
    }

    #[test]
    fn insert_at_and_iter() {
        let mut t: Table<&str, 4> = Table::new();
        let h = t.insert_at(3, "three").expect("free");
        assert_eq!(
            t.insert_at(3, "again").map_err(|e| e.0),
            Err(TableError::Occupied)
        );
        assert_eq!(
            t.insert_at(4, "no").map_err(|e| e.0),
            Err(TableError::OutOfRange)
        );
        assert_eq!(t.handle_at(3), Some(h));
        assert_eq!(t.handle_at(2), None);
        let all: std::vec::Vec<_> = t.iter().collect();
        assert_eq!(all, [(h, &"three")]);
    }

    #[test]
    fn handle_encoding() {
        let h = Handle {
            index: 0,
            generation: 0,
        };
        assert_eq!(h.encode(), 1);
        assert_eq!(Handle::decode(h.encode()), Some(h));
        let h = Handle {
            index: 63,
            generation: u32::MAX,
        };
        assert_eq!(Handle::decode(h.encode()), Some(h));
        assert_eq!(Handle::decode(0), None);
        assert_eq!(Handle::decode(0xffff_ffff_0000_0000), None);
        // A forged value decodes but the table rejects it.
        let t: Table<u8, 4> = Table::new();
        let forged = Handle::decode(u64::MAX).expect("non-zero low half");
        assert_eq!(t.get(forged), Err(TableError::OutOfRange));
    }
}
