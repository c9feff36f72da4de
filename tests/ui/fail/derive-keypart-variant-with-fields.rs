use cache_runtime::KeyPart;

#[derive(KeyPart)]
enum Filter {
    All,
    Dealer(u64),
}

fn main() {
    let _ = (Filter::All, Filter::Dealer(1));
}
