# Core RFC 5228: if/elsif/else, header, exists, stop, keep, fileinto.
require "fileinto";
if header :contains "subject" ["Fwd:", "Fw:"] {
    fileinto "Archive";
    stop;
} elsif exists ["List-Id", "List-Unsubscribe"] {
    fileinto "Lists";
} elsif header :is "subject" "Pictures from the lake" {
    keep;
    fileinto "Family";
} else {
    /* plain personal mail stays in INBOX */
    keep;
}
if header :matches "subject" "Re: *" { fileinto "Work"; }
