//! `row_shape!`: one column list in, the struct and a [`super::Shape`] out.

/// Declares a row shape from one column list: a unit type implementing [`super::Shape`]
/// (columns, Arrow arrays, PostgreSQL binds) and, optionally, the struct its user columns
/// are fields of.
///
/// ```text
/// row_shape! {
///     /// Docs of the shape.
///     pub shape Name<'a> = RowType;          // what one row is (here: a tuple of borrows)
///     /// Docs of the struct.                // optional: with it, `RowType` is
///     #[derive(Debug)]                       // `(&'a LoadRecord, &'a Struct)`
///     pub struct Struct;
///     columns {
///         /// A struct field (docs kept), read with `AsCell`:
///         name: OwnedType => Dictionary|Plain|Skip, Column|Jsonb|Skip;
///         /// A column computed from the row, of a `Cell` type:
///         name: CellType = |row| expr => Plain, Column;
///     }
/// }
/// ```
macro_rules! row_shape {
    // Entry, without a struct.
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis shape $shape:ident<$lt:lifetime> = $row:ty;
        columns { $($cols:tt)* }
    ) => {
        row_shape!(@munch [$(#[doc = $sdoc])* $vis $shape $lt $row] [] {} {} $($cols)*);
    };
    // Entry, with a struct.
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis shape $shape:ident<$lt:lifetime> = $row:ty;
        $(#[$smeta:meta])*
        $svis:vis struct $sname:ident;
        columns { $($cols:tt)* }
    ) => {
        row_shape!(
            @munch [$(#[doc = $sdoc])* $vis $shape $lt $row] [$(#[$smeta])* $svis $sname] {} {}
            $($cols)*
        );
    };
    // A computed column.
    (
        @munch $head:tt $st:tt {$($f:tt)*} {$($c:tt)*}
        $(#[doc = $doc:literal])*
        $name:ident: $cell:ty = $get:expr => $pq:ident, $pg:ident;
        $($rest:tt)*
    ) => {
        row_shape!(
            @munch $head $st {$($f)*} {$($c)* [$name, ($cell), ($get), $pq, $pg]} $($rest)*
        );
    };
    // A struct field.
    (
        @munch $head:tt $st:tt {$($f:tt)*} {$($c:tt)*}
        $(#[doc = $doc:literal])*
        $name:ident: $owned:ty => $pq:ident, $pg:ident;
        $($rest:tt)*
    ) => {
        row_shape!(
            @munch $head $st
            {$($f)* $(#[doc = $doc])* pub $name: $owned,}
            {$($c)* [
                $name,
                (<$owned as $crate::rows::AsCell>::Cell<'_>),
                (|&(_, u)| $crate::rows::AsCell::as_cell(&u.$name)),
                $pq,
                $pg
            ]}
            $($rest)*
        );
    };
    // Every column read: emit.
    (
        @munch [$(#[doc = $sdoc:literal])* $vis:vis $shape:ident $lt:lifetime $row:ty]
        $st:tt {$($f:tt)*}
        {$([$name:ident, ($cell:ty), ($get:expr), $pq:ident, $pg:ident])*}
    ) => {
        row_shape!(@struct $st {$($f)*});

        $(#[doc = $sdoc])*
        $vis struct $shape;

        impl $crate::rows::Shape for $shape {
            type Row<$lt> = $row;

            const COLUMNS: &'static [$crate::rows::Column] = &[$(
                $crate::rows::Column {
                    name: stringify!($name),
                    field: <$cell as $crate::rows::Cell>::field,
                    pg_type: <$cell as $crate::rows::Cell>::PG,
                    parquet: $crate::rows::Parquet::$pq,
                    pg: $crate::rows::Pg::$pg,
                }
            ),*];

            fn arrays(
                rows: &[Self::Row<'_>],
            ) -> Result<Vec<arrow::array::ArrayRef>, arrow::error::ArrowError> {
                let mut out = Vec::with_capacity(Self::COLUMNS.len());
                $(row_shape!(@array $pq, out, rows, $cell, $get);)*
                Ok(out)
            }

            fn bind<'q>(
                query: $crate::rows::PgQuery<'q>,
                rows: &[Self::Row<'_>],
            ) -> $crate::rows::PgQuery<'q> {
                $(let query = row_shape!(@bind $pg, query, rows, $cell, $get);)*
                query
            }
        }
    };
    (@struct [] {$($f:tt)*}) => {};
    (@struct [$(#[$m:meta])* $v:vis $name:ident] {$($f:tt)*}) => {
        $(#[$m])*
        $v struct $name {
            $($f)*
        }
    };
    (@array Skip, $out:ident, $rows:ident, $cell:ty, $get:expr) => {};
    (@array $pq:ident, $out:ident, $rows:ident, $cell:ty, $get:expr) => {
        $out.push(<$cell as $crate::rows::Cell>::array($rows.iter().map($get))?)
    };
    (@bind Skip, $query:ident, $rows:ident, $cell:ty, $get:expr) => {
        $query
    };
    (@bind $pg:ident, $query:ident, $rows:ident, $cell:ty, $get:expr) => {
        $query.bind($rows.iter().map($get).collect::<Vec<$cell>>())
    };
}
