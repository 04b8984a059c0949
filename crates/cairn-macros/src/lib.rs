//! Derive macros for Cairn graphs. Use them through `cairn_graph`, which re-exports them:
//! `use cairn_graph::State;` brings both the trait and the derive into scope.
//!
//! `#[derive(State)]` on a struct with named fields generates:
//! * `<Name>Update`, the partial update a node returns: every field wrapped in `Option`
//!   (`None` = not written), with `Default`, `Clone`, `Debug` and serde support, plus one
//!   builder method per field (`ChatUpdate::default().messages(vec![..])`);
//! * `impl cairn_graph::State for <Name>`: each field is one channel; an update is applied
//!   field by field through the field's reducer, and each field is encoded on its own so only
//!   changed fields are stored.
//!
//! Reducers are chosen per field with `#[reducer(...)]`:
//! `replace` (the default), `append` (lists: `Extend`), `merge` (maps: `Extend`, later keys
//! win), `add` (numbers: `AddAssign`) or `with = path::to::function` where the function is
//! `fn(&mut T, T)`. `#[state(update = OtherName)]` on the struct renames the update type.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{parse_macro_input, Data, DeriveInput, Fields, Ident, LitStr, Path};

/// Derives `cairn_graph::State` for a struct with named fields; see the crate docs.
#[proc_macro_derive(State, attributes(reducer, state))]
pub fn derive_state(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

enum Reducer {
    Replace,
    Append,
    Merge,
    Add,
    Custom(Path),
}

fn parse_reducer(attrs: &[syn::Attribute]) -> syn::Result<Reducer> {
    let mut reducer = Reducer::Replace;
    for attr in attrs {
        if !attr.path().is_ident("reducer") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("replace") {
                reducer = Reducer::Replace;
            } else if meta.path.is_ident("append") {
                reducer = Reducer::Append;
            } else if meta.path.is_ident("merge") {
                reducer = Reducer::Merge;
            } else if meta.path.is_ident("add") {
                reducer = Reducer::Add;
            } else if meta.path.is_ident("with") {
                let value = meta.value()?;
                let path: Path = if value.peek(LitStr) {
                    value.parse::<LitStr>()?.parse()?
                } else {
                    value.parse()?
                };
                reducer = Reducer::Custom(path);
            } else {
                return Err(meta.error(
                    "unknown reducer: use replace, append, merge, add or with = path::to::fn",
                ));
            }
            Ok(())
        })?;
    }
    Ok(reducer)
}

/// Whether `ty` is spelled as a type whose values include `null`: an `Option`
/// (`Option<T>`, `std::option::Option<T>` …) or a JSON value (`serde_json::Value`, `Value`),
/// so that an update setting it to `null` must not read back as "not written".
fn is_option(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "Option" || segment.ident == "Value"),
        syn::Type::Group(group) => is_option(&group.elem),
        syn::Type::Paren(paren) => is_option(&paren.elem),
        _ => false,
    }
}

fn update_name(input: &DeriveInput) -> syn::Result<Ident> {
    let mut name = format_ident!("{}Update", input.ident);
    for attr in &input.attrs {
        if !attr.path().is_ident("state") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("update") {
                let value = meta.value()?;
                name = if value.peek(LitStr) {
                    let lit: LitStr = value.parse()?;
                    lit.parse::<Ident>().map_err(|_| {
                        syn::Error::new(
                            lit.span(),
                            format!("update = {:?} is not a type name", lit.value()),
                        )
                    })?
                } else {
                    value.parse()?
                };
                Ok(())
            } else {
                Err(meta.error("unknown state option: use update = Name"))
            }
        })?;
    }
    Ok(name)
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let vis = &input.vis;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "#[derive(State)] does not support generic structs",
        ));
    }
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[derive(State)] needs a struct with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[derive(State)] needs a struct with named fields",
        ));
    };
    if fields.named.len() > 64 {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[derive(State)] supports at most 64 fields; group fields into nested structs",
        ));
    }
    let update = update_name(&input)?;
    let krate = quote!(::cairn_graph);
    let private = quote!(#krate::__private);

    let mut update_fields = Vec::new();
    let mut setters = Vec::new();
    let mut infos = Vec::new();
    let mut written = Vec::new();
    let mut applies = Vec::new();
    let mut encodes = Vec::new();
    let mut decodes = Vec::new();
    let mut encode_updates = Vec::new();
    let mut decode_updates = Vec::new();
    let mut item_counts = Vec::new();
    let mut encode_items = Vec::new();
    let mut shared_decodes = Vec::new();

    for (index, field) in fields.named.iter().enumerate() {
        let ident = field
            .ident
            .as_ref()
            .ok_or_else(|| syn::Error::new_spanned(field, "#[derive(State)] needs named fields"))?;
        let ty = &field.ty;
        let field_name = ident.to_string();
        let field_name = field_name.strip_prefix("r#").unwrap_or(&field_name);
        if matches!(field_name, "default" | "clone" | "fmt") {
            // The setter of this field would be an inherent method of the update type and
            // hide the trait method users call on it (`XUpdate::default()`).
            return Err(syn::Error::new_spanned(
                ident,
                format!(
                    "a state field named `{field_name}` would hide `{update}::{field_name}` (the \
                     update type's setters are named after the fields); rename the field"
                ),
            ));
        }
        let reducer = parse_reducer(&field.attrs)?;
        let bit = 1u64 << index;
        let doc = format!("New value for `{field_name}` (`None`: not written).");
        // An `Option` field's update to `None` is written as `null`, which serde would read
        // back as "not written": such fields read a present value as written. Other fields
        // keep serde's reading, where `null` is "not written" (updates built from JSON).
        let read_present = is_option(ty)
            .then(|| quote!(#[serde(deserialize_with = "::cairn_graph::__private::present")]));
        update_fields.push(quote! {
            #[doc = #doc]
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #read_present
            pub #ident: ::core::option::Option<#ty>,
        });
        let setter_doc = format!("Sets `{field_name}` in this update.");
        setters.push(quote! {
            #[doc = #setter_doc]
            #[must_use]
            pub fn #ident(mut self, value: impl ::core::convert::Into<#ty>) -> Self {
                self.#ident = ::core::option::Option::Some(value.into());
                self
            }
        });
        let (kind, apply) = match &reducer {
            Reducer::Replace => (
                quote!(Replace),
                quote!(#krate::reducers::replace(&mut self.#ident, value)),
            ),
            Reducer::Append => (
                quote!(Append),
                quote!(#krate::reducers::append(&mut self.#ident, value)),
            ),
            Reducer::Merge => (
                quote!(Merge),
                quote!(#krate::reducers::merge(&mut self.#ident, value)),
            ),
            Reducer::Add => (
                quote!(Add),
                quote!(#krate::reducers::add(&mut self.#ident, value)),
            ),
            Reducer::Custom(path) => (quote!(Custom), quote!(#path(&mut self.#ident, value))),
        };
        infos.push(quote! {
            #krate::FieldInfo { name: #field_name, reducer: #krate::ReducerKind::#kind }
        });
        written.push(quote! {
            if update.#ident.is_some() { mask |= #bit; }
        });
        applies.push(quote! {
            if let ::core::option::Option::Some(value) = update.#ident { #apply; }
        });
        if matches!(reducer, Reducer::Append) {
            // `Field(&v)` picks item-by-item storage for `Vec` fields by method resolution
            // on the concrete type, and whole storage for any other collection.
            item_counts.push(quote! {
                #index => (&#private::Field(&self.#ident)).item_count(),
            });
            encode_items.push(quote! {
                #index => (&#private::Field(&self.#ident)).encode_items(from, base, codec),
            });
            shared_decodes.push(quote! {
                #index => {
                    if let ::core::option::Option::Some(items) =
                        (&#private::Field(&known.#ident)).shared_items(shared)
                    {
                        self.#ident = items;
                        return ::core::result::Result::Ok(());
                    }
                }
            });
        }
        encodes.push(quote! { #index => codec.encode(&self.#ident), });
        decodes.push(quote! { #index => { self.#ident = codec.decode(value)?; ::core::result::Result::Ok(()) } });
        encode_updates.push(quote! {
            if let ::core::option::Option::Some(value) = &update.#ident {
                out.push((#index, codec.encode(value)?));
            }
        });
        decode_updates.push(quote! {
            #index => { update.#ident = ::core::option::Option::Some(codec.decode(value)?); ::core::result::Result::Ok(()) }
        });
    }

    let update_doc = format!(
        "A partial update of [`{name}`]: the fields a node writes (generated by `#[derive(State)]`)."
    );
    Ok(quote! {
        #[doc = #update_doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::default::Default,
                 #private::serde::Serialize, #private::serde::Deserialize)]
        #[serde(crate = "::cairn_graph::__private::serde")]
        #vis struct #update {
            #(#update_fields)*
        }

        impl #update {
            #(#setters)*
        }

        impl #krate::IntoNodeOutput<#name> for #update {
            fn into_command(self) -> #krate::Command<#name> {
                #krate::Command::update(self)
            }
        }

        impl #krate::State for #name {
            type Update = #update;

            fn fields() -> &'static [#krate::FieldInfo] {
                const FIELDS: &[#krate::FieldInfo] = &[#(#infos),*];
                FIELDS
            }

            fn written(update: &Self::Update) -> u64 {
                let mut mask = 0u64;
                #(#written)*
                mask
            }

            fn apply(&mut self, update: Self::Update) {
                #(#applies)*
            }

            fn encode_field(
                &self,
                index: usize,
                codec: &#private::ValueCodec,
            ) -> #private::Result<#private::TypedValue> {
                match index {
                    #(#encodes)*
                    _ => ::core::result::Result::Err(#private::no_such_field(index)),
                }
            }

            fn item_count(&self, index: usize) -> ::core::option::Option<usize> {
                #[allow(unused_imports)]
                use #private::{ItemByItem as _, Whole as _};
                match index {
                    #(#item_counts)*
                    _ => ::core::option::Option::None,
                }
            }

            fn encode_field_items(
                &self,
                index: usize,
                from: usize,
                base: &#private::ChannelVersion,
                codec: &#private::ValueCodec,
            ) -> #private::Result<::core::option::Option<#private::TypedValue>> {
                #[allow(unused_imports)]
                use #private::{ItemByItem as _, Whole as _};
                let _ = (from, base, codec);
                match index {
                    #(#encode_items)*
                    _ => ::core::result::Result::Ok(::core::option::Option::None),
                }
            }

            fn decode_field(
                &mut self,
                index: usize,
                value: &#private::TypedValue,
                codec: &#private::ValueCodec,
            ) -> #private::Result<()> {
                match index {
                    #(#decodes)*
                    _ => ::core::result::Result::Err(#private::no_such_field(index)),
                }
            }

            fn decode_field_sharing(
                &mut self,
                index: usize,
                value: &#private::TypedValue,
                codec: &#private::ValueCodec,
                known: &Self,
                shared: usize,
            ) -> #private::Result<()> {
                #[allow(unused_imports)]
                use #private::{NoShare as _, ShareItems as _};
                let _ = (known, shared);
                match index {
                    #(#shared_decodes)*
                    _ => {}
                }
                self.decode_field(index, value, codec)
            }

            fn encode_update(
                update: &Self::Update,
                codec: &#private::ValueCodec,
            ) -> #private::Result<::std::vec::Vec<(usize, #private::TypedValue)>> {
                let mut out = ::std::vec::Vec::new();
                #(#encode_updates)*
                ::core::result::Result::Ok(out)
            }

            fn decode_update_field(
                update: &mut Self::Update,
                index: usize,
                value: &#private::TypedValue,
                codec: &#private::ValueCodec,
            ) -> #private::Result<()> {
                match index {
                    #(#decode_updates)*
                    _ => ::core::result::Result::Err(#private::no_such_field(index)),
                }
            }
        }
    })
}
