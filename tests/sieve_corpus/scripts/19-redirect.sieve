# redirect (RFC 5228 §4.2) and :copy (RFC 3894): where a message is sent on, and whether
# it is also kept
require ["copy", "fileinto"];
if address :domain "from" ["example.com", "example.net"] {
  redirect :copy "archive@backup.example";
}
if header :contains "subject" ["invoice", "order"] {
  redirect "accounts@example.org";
  stop;
}
if size :over 20K {
  redirect "big@example.org";
  redirect "Big@example.org";
  fileinto "Misc";
}
