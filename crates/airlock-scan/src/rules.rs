//! The rule table: one entry per key shape a provider issues.
//!
//! Each rule has literal keywords (the prefilter looks for these; a region without one never
//! reaches a regular expression), a pattern whose first capture group is the secret, and the
//! number of leading characters of the secret that are a public prefix (shown in previews).
//!
//! Patterns follow the stable parts of a provider's format with length *ranges*: providers
//! lengthen keys without notice, and an exact length is how scanners go blind. Where a provider
//! has no prefix (Azure, Mistral, Cohere, Together's older keys), the rule needs the provider's
//! name nearby.

/// How sure a match is. Only [`Confidence::High`] fails a run by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// A shape without a provider-specific structure (generic assignments, a lone AWS key id).
    Low,
    /// A provider's own key format.
    High,
}

/// Characters a key's body is made of, for the boundary and placeholder checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    /// `[A-Za-z0-9]`
    Alnum,
    /// `[A-Za-z0-9_-]` (URL-safe base64 and friends)
    UrlSafe,
    /// `[0-9a-f]` (either case)
    Hex,
    /// `[A-Za-z0-9+/]`
    Base64,
}

impl Alphabet {
    /// Whether `b` belongs to the alphabet (used for the right-hand boundary).
    pub fn contains(self, b: u8) -> bool {
        match self {
            Alphabet::Alnum => b.is_ascii_alphanumeric(),
            Alphabet::UrlSafe => b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
            Alphabet::Hex => b.is_ascii_hexdigit(),
            Alphabet::Base64 => b.is_ascii_alphanumeric() || b == b'+' || b == b'/',
        }
    }
}

/// Special handling a rule needs after its pattern matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Post {
    /// The capture is the secret.
    None,
    /// An AWS access key id: look for its secret access key nearby; with one the finding is
    /// high confidence and the secret is the pair's secret half.
    AwsKeyId,
}

/// One key shape.
#[derive(Debug)]
pub struct Rule {
    /// Stable identifier (`openai-api-key`), used in output, SARIF and baselines.
    pub id: &'static str,
    /// Provider the key belongs to.
    pub provider: &'static str,
    /// What the rule finds, one line.
    pub description: &'static str,
    /// How sure a match is.
    pub confidence: Confidence,
    /// Literals of which at least one occurs in every match (case-sensitive; list the case
    /// variants that occur in practice).
    pub keywords: &'static [&'static str],
    /// The pattern; capture group 1 is the secret. `{assign}` stands for what may sit between
    /// a name and its value.
    pub pattern: &'static str,
    /// Leading characters of the secret that are a public prefix (`sk-proj-`).
    pub prefix_len: usize,
    /// What the secret's body is made of.
    pub alphabet: Alphabet,
    /// Post-processing.
    pub post: Post,
    /// Longest secret the pattern accepts (sizes the region the regex looks at).
    pub max_len: usize,
}

// Case variants of provider names used as context.
const AZURE: &[&str] = &["azure", "Azure", "AZURE"];
const MISTRAL: &[&str] = &["mistral", "Mistral", "MISTRAL"];
const COHERE: &[&str] = &["cohere", "Cohere", "COHERE", "CO_API_KEY", "co_api_key"];
const TOGETHER: &[&str] = &["together", "Together", "TOGETHER"];
const BRAINTRUST: &[&str] = &["braintrust", "Braintrust", "BRAINTRUST"];
const AWS_SECRET: &[&str] = &["aws", "Aws", "AWS"];
const GENERIC: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "apiKey",
    "ApiKey",
    "API_KEY",
    "APIKEY",
    "API-KEY",
    "secret_key",
    "secretKey",
    "SECRET_KEY",
    "access_token",
    "accessToken",
    "ACCESS_TOKEN",
    "auth_token",
    "authToken",
    "AUTH_TOKEN",
];

// What may sit between a variable name and its value: quotes, `=`, `:`, `=>`, spaces, and a
// JSON-escaped quote.
const ASSIGN: &str =
    r#"(?:\\?["'`]?[ \t]*(?:=|:|=>|:=|,)[ \t]*\\?["'`]?|\\?["'`]?[ \t]+\\?["'`]?)"#;

/// All rules, highest priority first (when two rules match at the same place, the first wins).
pub fn all() -> &'static [Rule] {
    RULES
}

static RULES: &[Rule] = &[
    Rule {
        id: "anthropic-api-key",
        provider: "Anthropic",
        description: "Anthropic API or admin key (sk-ant-api03-…, sk-ant-admin01-…)",
        confidence: Confidence::High,
        keywords: &["sk-ant-"],
        pattern: r"(sk-ant-(?:api|admin|oat|sid)[0-9]{2}-[A-Za-z0-9_-]{32,250})",
        prefix_len: 13,
        alphabet: Alphabet::UrlSafe,
        post: Post::None,
        max_len: 270,
    },
    Rule {
        id: "openrouter-api-key",
        provider: "OpenRouter",
        description: "OpenRouter API key (sk-or-v1-…)",
        confidence: Confidence::High,
        keywords: &["sk-or-"],
        pattern: r"(sk-or-v[0-9]-[a-f0-9]{56,72})",
        prefix_len: 9,
        alphabet: Alphabet::Hex,
        post: Post::None,
        max_len: 90,
    },
    Rule {
        id: "openai-api-key",
        provider: "OpenAI",
        description: "OpenAI key (sk-, sk-proj-, sk-svcacct-, sk-admin-) with the T3BlbkFJ marker",
        confidence: Confidence::High,
        keywords: &["sk-"],
        pattern: r"(sk-(?:[a-z]{2,12}-)?[A-Za-z0-9_-]{16,250}T3BlbkFJ[A-Za-z0-9_-]{16,250})",
        prefix_len: 3,
        alphabet: Alphabet::UrlSafe,
        post: Post::None,
        max_len: 530,
    },
    Rule {
        id: "openai-project-key",
        provider: "OpenAI",
        description: "OpenAI project, service-account or admin key without the usual marker",
        confidence: Confidence::High,
        keywords: &["sk-proj-", "sk-svcacct-", "sk-admin-"],
        pattern: r"(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{48,300})",
        prefix_len: 8,
        alphabet: Alphabet::UrlSafe,
        post: Post::None,
        max_len: 320,
    },
    Rule {
        id: "braintrust-api-key",
        provider: "Braintrust",
        description: "Braintrust API key (sk-… near the word braintrust)",
        confidence: Confidence::High,
        keywords: BRAINTRUST,
        pattern: r"(?i:braintrust)[^\n]{0,48}?(sk-[A-Za-z0-9]{32,64})",
        prefix_len: 3,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 70,
    },
    Rule {
        id: "deepseek-api-key",
        provider: "DeepSeek",
        description: "DeepSeek API key (sk- and 32 hex digits)",
        confidence: Confidence::High,
        keywords: &["sk-"],
        pattern: r"(sk-[a-f0-9]{32})",
        prefix_len: 3,
        alphabet: Alphabet::Hex,
        post: Post::None,
        max_len: 40,
    },
    Rule {
        id: "groq-api-key",
        provider: "Groq",
        description: "Groq API key (gsk_…)",
        confidence: Confidence::High,
        keywords: &["gsk_"],
        pattern: r"(gsk_[A-Za-z0-9]{40,64})",
        prefix_len: 4,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 70,
    },
    Rule {
        id: "xai-api-key",
        provider: "xAI",
        description: "xAI API key (xai-…)",
        confidence: Confidence::High,
        keywords: &["xai-"],
        pattern: r"(xai-[A-Za-z0-9]{60,100})",
        prefix_len: 4,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 110,
    },
    Rule {
        id: "perplexity-api-key",
        provider: "Perplexity",
        description: "Perplexity API key (pplx-…)",
        confidence: Confidence::High,
        keywords: &["pplx-"],
        pattern: r"(pplx-[A-Za-z0-9]{40,64})",
        prefix_len: 5,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 70,
    },
    Rule {
        id: "huggingface-token",
        provider: "Hugging Face",
        description: "Hugging Face access token (hf_…, api_org_…)",
        confidence: Confidence::High,
        keywords: &["hf_", "api_org_"],
        pattern: r"((?:hf_|api_org_)[A-Za-z0-9]{30,40})",
        prefix_len: 3,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 50,
    },
    Rule {
        id: "replicate-api-token",
        provider: "Replicate",
        description: "Replicate API token (r8_…)",
        confidence: Confidence::High,
        keywords: &["r8_"],
        pattern: r"(r8_[A-Za-z0-9]{32,44})",
        prefix_len: 3,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 50,
    },
    Rule {
        id: "fireworks-api-key",
        provider: "Fireworks",
        description: "Fireworks AI API key (fw_…)",
        confidence: Confidence::High,
        keywords: &["fw_"],
        pattern: r"(fw_[A-Za-z0-9]{20,48})",
        prefix_len: 3,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 60,
    },
    Rule {
        id: "together-api-key",
        provider: "Together",
        description: "Together AI API key (tgp_v1_…)",
        confidence: Confidence::High,
        keywords: &["tgp_v"],
        pattern: r"(tgp_v[0-9]_[A-Za-z0-9_-]{36,64})",
        prefix_len: 7,
        alphabet: Alphabet::UrlSafe,
        post: Post::None,
        max_len: 80,
    },
    Rule {
        id: "together-api-key-hex",
        provider: "Together",
        description: "Together AI API key (64 hex digits near the word together)",
        confidence: Confidence::High,
        keywords: TOGETHER,
        pattern: r"(?i:together)[^\n]{0,48}?(?i:key|token)[A-Za-z0-9_]{0,8}{assign}([a-f0-9]{64})",
        prefix_len: 0,
        alphabet: Alphabet::Hex,
        post: Post::None,
        max_len: 64,
    },
    Rule {
        id: "google-api-key",
        provider: "Google",
        description: "Google API key, e.g. Gemini (AIza…)",
        confidence: Confidence::High,
        keywords: &["AIza"],
        pattern: r"(AIza[A-Za-z0-9_-]{35})",
        prefix_len: 4,
        alphabet: Alphabet::UrlSafe,
        post: Post::None,
        max_len: 40,
    },
    Rule {
        id: "azure-openai-key",
        provider: "Azure OpenAI",
        description: "Azure OpenAI / AI services key (32 hex or 84 characters near the word azure)",
        confidence: Confidence::High,
        keywords: AZURE,
        pattern: r"(?i:azure)[^\n]{0,64}?(?i:key|secret)[A-Za-z0-9_]{0,8}{assign}([a-fA-F0-9]{32}|[A-Za-z0-9]{84})",
        prefix_len: 0,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 84,
    },
    Rule {
        id: "mistral-api-key",
        provider: "Mistral",
        description: "Mistral API key (32 characters near the word mistral)",
        confidence: Confidence::High,
        keywords: MISTRAL,
        pattern: r"(?i:mistral)[^\n]{0,48}?(?i:key|token)[A-Za-z0-9_]{0,8}{assign}([A-Za-z0-9]{32})",
        prefix_len: 0,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 32,
    },
    Rule {
        id: "cohere-api-key",
        provider: "Cohere",
        description: "Cohere API key (40 characters near the word cohere or CO_API_KEY)",
        confidence: Confidence::High,
        keywords: COHERE,
        pattern: r"(?:(?i:cohere)[^\n]{0,48}?(?i:key|token)|(?i:co_api_key))[A-Za-z0-9_]{0,8}{assign}([A-Za-z0-9]{40})",
        prefix_len: 0,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 40,
    },
    Rule {
        id: "github-token",
        provider: "GitHub",
        description: "GitHub token (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)",
        confidence: Confidence::High,
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        pattern: r"(gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9]{20,30}_[A-Za-z0-9]{50,70})",
        prefix_len: 4,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 260,
    },
    Rule {
        id: "airlock-token",
        provider: "airlock",
        description: "airlock client token (alk_tok_…)",
        confidence: Confidence::High,
        keywords: &["alk_tok_"],
        pattern: r"(alk_tok_[A-Za-z0-9_-]{60,16384})",
        prefix_len: 8,
        alphabet: Alphabet::UrlSafe,
        post: Post::None,
        max_len: 16400,
    },
    Rule {
        id: "airlock-admin-key",
        provider: "airlock",
        description: "airlock admin key (alk_admin_…)",
        confidence: Confidence::High,
        keywords: &["alk_admin_"],
        pattern: r"(alk_admin_[a-f0-9]{8,32}_[a-f0-9]{32,96})",
        prefix_len: 10,
        alphabet: Alphabet::Hex,
        post: Post::None,
        max_len: 140,
    },
    Rule {
        id: "airlock-service-account-key",
        provider: "airlock",
        description: "airlock service-account key (alk_sa_…)",
        confidence: Confidence::High,
        keywords: &["alk_sa_"],
        pattern: r"(alk_sa_[A-Za-z0-9]{6,32}_[A-Za-z0-9]{32,96})",
        prefix_len: 7,
        alphabet: Alphabet::Alnum,
        post: Post::None,
        max_len: 140,
    },
    Rule {
        id: "aws-access-key",
        provider: "AWS",
        description: "AWS access key id (AKIA…, ASIA…) with its secret access key nearby",
        confidence: Confidence::High,
        keywords: &["AKIA", "ASIA", "ABIA", "ACCA"],
        pattern: r"((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})",
        prefix_len: 4,
        alphabet: Alphabet::Alnum,
        post: Post::AwsKeyId,
        max_len: 20,
    },
    Rule {
        id: "aws-secret-access-key",
        provider: "AWS",
        description: "AWS secret access key assigned to an aws…secret… name",
        confidence: Confidence::High,
        keywords: AWS_SECRET,
        pattern: r"(?i:aws)[A-Za-z0-9_.\-]{0,24}?(?i:secret)[A-Za-z0-9_.\-]{0,24}{assign}([A-Za-z0-9/+]{40})",
        prefix_len: 0,
        alphabet: Alphabet::Base64,
        post: Post::None,
        max_len: 40,
    },
    Rule {
        id: "generic-api-key",
        provider: "unknown",
        description: "High-entropy value assigned to an api_key / secret / token name",
        confidence: Confidence::Low,
        keywords: GENERIC,
        pattern: r#"(?i:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token)["'`]?[ \t]*(?:=|:|=>|:=)[ \t]*["'`]([A-Za-z0-9_\-]{32,80})["'`]"#,
        prefix_len: 0,
        alphabet: Alphabet::UrlSafe,
        post: Post::None,
        max_len: 80,
    },
];

/// The rule id used for a lone AWS access key id (no secret nearby): low confidence.
pub const AWS_KEY_ID_ALONE: Rule = Rule {
    id: "aws-access-key-id",
    provider: "AWS",
    description: "AWS access key id without a secret access key nearby",
    confidence: Confidence::Low,
    keywords: &[],
    pattern: "",
    prefix_len: 4,
    alphabet: Alphabet::Alnum,
    post: Post::None,
    max_len: 20,
};

/// A rule's pattern with `{assign}` expanded.
pub fn expand(pattern: &str) -> String {
    pattern.replace("{assign}", ASSIGN)
}
