//! Word lists the generator draws from. Every value is invented; addresses, domains, IP ranges
//! and phone numbers come from ranges reserved for documentation, so no generated record can
//! reach a real person.

/// Given names: (as displayed, as used in an email address).
pub(crate) const FIRST_NAMES: &[(&str, &str)] = &[
    ("Ada", "ada"),
    ("Alan", "alan"),
    ("Grace", "grace"),
    ("Edsger", "edsger"),
    ("Barbara", "barbara"),
    ("Donald", "donald"),
    ("Frances", "frances"),
    ("John", "john"),
    ("Katherine", "katherine"),
    ("Claude", "claude"),
    ("Margaret", "margaret"),
    ("Niklaus", "niklaus"),
    ("Radia", "radia"),
    ("Tim", "tim"),
    ("Hedy", "hedy"),
    ("Dennis", "dennis"),
    ("Sophie", "sophie"),
    ("Émilie", "emilie"),
    ("Søren", "soren"),
    ("Srinivasa", "srinivasa"),
    ("Emmy", "emmy"),
    ("Kurt", "kurt"),
    ("Sofia", "sofia"),
    ("Leonhard", "leonhard"),
    ("Maryam", "maryam"),
    ("Hypatia", "hypatia"),
    ("Carl", "carl"),
    ("Marie", "marie"),
    ("Paul", "paul"),
    ("Shafi", "shafi"),
    ("Whitfield", "whitfield"),
    ("Annie", "annie"),
    ("Evelyn", "evelyn"),
    ("Kristen", "kristen"),
    ("Ole-Johan", "ole-johan"),
    ("Joan", "joan"),
    ("Leslie", "leslie"),
    ("Fran", "fran"),
    ("Ken", "ken"),
    ("Jean", "jean"),
];

/// Family names: (as displayed, as used in an email address).
pub(crate) const LAST_NAMES: &[(&str, &str)] = &[
    ("Lovelace", "lovelace"),
    ("Turing", "turing"),
    ("Hopper", "hopper"),
    ("Dijkstra", "dijkstra"),
    ("Liskov", "liskov"),
    ("Knuth", "knuth"),
    ("Allen", "allen"),
    ("Backus", "backus"),
    ("Johnson", "johnson"),
    ("Shannon", "shannon"),
    ("Hamilton", "hamilton"),
    ("Wirth", "wirth"),
    ("Perlman", "perlman"),
    ("Berners-Lee", "berners-lee"),
    ("Lamarr", "lamarr"),
    ("Ritchie", "ritchie"),
    ("Germain", "germain"),
    ("du Châtelet", "duchatelet"),
    ("Kierkegaard", "kierkegaard"),
    ("Ramanujan", "ramanujan"),
    ("Noether", "noether"),
    ("Gödel", "godel"),
    ("Kovalevskaya", "kovalevskaya"),
    ("Euler", "euler"),
    ("Mirzakhani", "mirzakhani"),
    ("of Alexandria", "alexandria"),
    ("Gauss", "gauss"),
    ("Curie", "curie"),
    ("Erdős", "erdos"),
    ("Goldwasser", "goldwasser"),
    ("Diffie", "diffie"),
    ("Easley", "easley"),
    ("Boyd Granville", "boydgranville"),
    ("Nygaard", "nygaard"),
    ("Dahl", "dahl"),
    ("Clarke", "clarke"),
    ("O'Neill", "oneill"),
    ("Lamport", "lamport"),
    ("Thompson", "thompson"),
    ("Bartik", "bartik"),
];

/// Domains reserved for documentation (RFC 2606).
pub(crate) const EMAIL_DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];

/// Company names, all on reserved domains' wording.
pub(crate) const COMPANIES: &[&str] = &[
    "Example Analytics Ltd",
    "Sample Logistics GmbH",
    "Placeholder Studio SARL",
    "Demo Widgets Inc.",
    "Fictional Foods BV",
    "Imaginary Robotics AB",
    "Test Pattern Media",
    "Dummy & Daughters",
    "Mock Harbour Shipping",
    "Prototype Bakery",
];

/// A place: ISO country code, city, postcode pattern, street names.
pub(crate) struct Place {
    pub(crate) country: &'static str,
    pub(crate) city: &'static str,
    pub(crate) postcode: &'static str,
    pub(crate) streets: &'static [&'static str],
}

/// Where the sample subjects live.
pub(crate) const PLACES: &[Place] = &[
    Place {
        country: "FR",
        city: "Paris",
        postcode: "750",
        streets: &["rue de l'Exemple", "avenue Fictive"],
    },
    Place {
        country: "DE",
        city: "Berlin",
        postcode: "101",
        streets: &["Musterstraße", "Beispielweg"],
    },
    Place {
        country: "NL",
        city: "Utrecht",
        postcode: "351",
        streets: &["Voorbeeldlaan", "Proefstraat"],
    },
    Place {
        country: "ES",
        city: "Valencia",
        postcode: "460",
        streets: &["Calle Ejemplo", "Avenida Ficticia"],
    },
    Place {
        country: "IT",
        city: "Torino",
        postcode: "101",
        streets: &["Via Esempio", "Corso Campione"],
    },
    Place {
        country: "SE",
        city: "Uppsala",
        postcode: "753",
        streets: &["Exempelgatan", "Provvägen"],
    },
    Place {
        country: "PL",
        city: "Kraków",
        postcode: "31-",
        streets: &["ulica Przykładowa", "aleja Testowa"],
    },
    Place {
        country: "IE",
        city: "Galway",
        postcode: "H91",
        streets: &["Example Street", "Sample Road"],
    },
    Place {
        country: "PT",
        city: "Porto",
        postcode: "400",
        streets: &["Rua do Exemplo", "Travessa Fictícia"],
    },
    Place {
        country: "GB",
        city: "Leeds",
        postcode: "LS1",
        streets: &["Example Lane", "Placeholder Row"],
    },
];

/// Pages of the SaaS application (access log).
pub(crate) const APP_PAGES: &[&str] = &[
    "/dashboard",
    "/inbox",
    "/inbox/conversations",
    "/settings/profile",
    "/settings/team",
    "/settings/notifications",
    "/billing",
    "/billing/invoices",
    "/reports/weekly",
    "/integrations",
    "/help",
    "/login",
    "/logout",
];

/// Pages of a customer's website (visits).
pub(crate) const SITE_PAGES: &[&str] = &[
    "https://shop.example.com/",
    "https://shop.example.com/pricing",
    "https://shop.example.com/products/lamp",
    "https://shop.example.com/products/chair",
    "https://shop.example.com/cart",
    "https://shop.example.com/checkout",
    "https://blog.example.org/posts/hello",
    "https://blog.example.org/posts/release-notes",
    "https://support.example.net/faq",
    "https://support.example.net/contact",
];

/// Referring pages (access log); a third of the rows have none.
pub(crate) const REFERRERS: &[&str] = &[
    "https://www.example.com/",
    "https://search.example.org/?q=helpdesk",
    "https://news.example.net/article/42",
    "https://mail.example.com/",
];

/// Browser user agents.
pub(crate) const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
];

/// (operating system, browser, device, screen) combinations seen on visits.
pub(crate) const DEVICES: &[(&str, &str, &str, &str)] = &[
    ("Linux", "Firefox", "desktop", "1920x1080"),
    ("Windows", "Chrome", "desktop", "1366x768"),
    ("Windows", "Edge", "desktop", "2560x1440"),
    ("macOS", "Safari", "desktop", "1440x900"),
    ("iOS", "Safari", "mobile", "390x844"),
    ("Android", "Chrome", "mobile", "412x915"),
    ("iPadOS", "Safari", "tablet", "820x1180"),
];

/// Subject lines of support conversations.
pub(crate) const CONVERSATION_SUBJECTS: &[&str] = &[
    "Cannot log in",
    "Question about my invoice",
    "How do I export my data?",
    "Feature request: dark mode",
    "Widget not showing on my site",
    "Change of billing address",
    "Team member invitation",
    "Refund request",
    "Notifications arrive twice",
    "Please delete my old conversations",
];

/// Sentences that make up chat messages and text attachments.
pub(crate) const SENTENCES: &[&str] = &[
    "Hello, I have a question about my account.",
    "Thanks for the quick reply!",
    "The page keeps loading forever after I sign in.",
    "Could you send me a copy of last month's invoice?",
    "I tried clearing the cache but nothing changed.",
    "Our team would like to add two more seats.",
    "Is there a way to change the widget colour?",
    "The export finished, but the file looks empty.",
    "We moved offices, so the billing address has changed.",
    "Everything works again, thank you.",
    "I'll check with my colleague and come back to you.",
    "Can you confirm that the old data was removed?",
    "The mobile app shows a different number of messages.",
    "Please cancel the renewal at the end of the period.",
    "Screenshots are attached to this conversation.",
    "Let me know if you need anything else from me.",
];

/// What a support agent writes back.
pub(crate) const REPLIES: &[&str] = &[
    "Thanks for reaching out, we're looking into it.",
    "Could you tell us which browser you are using?",
    "We've just sent the invoice to your billing email.",
    "This is fixed in today's release; please try again.",
    "I've forwarded your request to our billing team.",
    "Your request has been completed.",
];
