# vacation (RFC 5230): the action and its period; whether a reply is actually sent is
# decided when it is executed (RFC 5230 §4.5), which sieve-test does not do
require ["vacation", "fileinto"];
if header :contains "subject" "urgent" {
  vacation :days 0 :subject "Away" :handle "urgent" "I am away; call me.";
  fileinto "Work";
} elsif address :domain "from" "example.org" {
  vacation :days 30 :addresses ["alice@example.org"] "Back next month.";
} elsif exists "list-id" {
  keep;
} else {
  vacation "I am away this week.";
}
