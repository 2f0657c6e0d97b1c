//! [`Shared`]: an object as the store holds it. Tables, transactions and watch events share one
//! immutable allocation per object version (the `api::Object` wrapper the watch events carry), so a
//! write copies no object and an event costs a reference count. Changing a shared object copies it
//! first (copy-on-write), so what readers and events hold never changes under them.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use crate::object::StoreObject;

/// A stored object of kind `T`, shared: cloning is a reference count, reading goes through `Deref`.
/// Got from [`ReadTx::get_shared`](crate::ReadTx::get_shared) and
/// [`ReadTx::find_shared`](crate::ReadTx::find_shared); written back with
/// [`Tx::update_shared`](crate::Tx::update_shared).
pub struct Shared<T> {
    /// Always holds a `T` (checked when built).
    object: Arc<api::Object>,
    kind: PhantomData<fn() -> T>,
}

impl<T: StoreObject> Shared<T> {
    /// Wraps an object (moves it; no copy of its content).
    pub fn new(object: T) -> Self {
        Shared {
            object: Arc::new(object.into_object()),
            kind: PhantomData,
        }
    }

    /// The shared `api::Object` if it holds a `T`.
    pub fn from_object(object: Arc<api::Object>) -> Option<Self> {
        T::in_object(&object)?;
        Some(Shared {
            object,
            kind: PhantomData,
        })
    }

    /// The object, to change it: copied first if anything else holds it.
    pub fn make_mut(&mut self) -> &mut T {
        T::in_object_mut(Arc::make_mut(&mut self.object)).expect("a Shared<T> holds a T")
    }

    /// The object by value: moved out if nothing else holds it, copied otherwise.
    pub fn into_inner(self) -> T {
        let object = Arc::try_unwrap(self.object).unwrap_or_else(|shared| (*shared).clone());
        T::from_object(object).expect("a Shared<T> holds a T")
    }

    /// The shared `api::Object` wrapper, as watch events carry it.
    pub fn as_object(&self) -> &Arc<api::Object> {
        &self.object
    }

    /// [`Shared::as_object`] by value.
    pub fn into_object(self) -> Arc<api::Object> {
        self.object
    }
}

impl<T: StoreObject> From<T> for Shared<T> {
    fn from(object: T) -> Self {
        Shared::new(object)
    }
}

impl<T: StoreObject> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        T::in_object(&self.object).expect("a Shared<T> holds a T")
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            object: Arc::clone(&self.object),
            kind: PhantomData,
        }
    }
}

impl<T: StoreObject> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: StoreObject> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.object, &other.object) || **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_only_when_shared() {
        let mut a = Shared::new(api::Secret {
            id: "s".into(),
            ..Default::default()
        });
        let b = a.clone();
        assert!(Arc::ptr_eq(a.as_object(), b.as_object()));
        a.make_mut().id = "t".into();
        assert_eq!((a.id.as_str(), b.id.as_str()), ("t", "s"));
        let before = Arc::as_ptr(a.as_object());
        a.make_mut().id = "u".into();
        assert_eq!(
            Arc::as_ptr(a.as_object()),
            before,
            "unique: changed in place"
        );
        assert_eq!(b.clone().into_inner().id, "s");
        assert!(Shared::<api::Node>::from_object(b.into_object()).is_none());
    }
}
