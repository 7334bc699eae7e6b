# Pigeonhole 0.5 bug: "?", then literal text, then a trailing "*" matches values whose
# second character is not that literal: "?X*" matches "Hello world". RFC 5228 §2.7.1:
# "?" matches exactly one character, so this must be false. popgate answers false.
require "fileinto";
if header :matches "subject" "?X*" { fileinto "Misc"; }
