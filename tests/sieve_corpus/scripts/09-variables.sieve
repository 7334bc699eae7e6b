require ["variables", "fileinto", "mailbox", "relational", "comparator-i;ascii-numeric"];
if header :matches "list-id" "<*.*.example.*>" {
    set :lower :upperfirst "list" "${2}";
    fileinto :create "Lists/${list}";
}
set "sender" "";
if address :matches :localpart "from" "*.*" { set "sender" "${1}"; }
if string :is "${sender}" "" { set "who" "nobody"; } else { set :upper "who" "${sender}"; }
if string :matches "${who}" "J*" { fileinto "Family"; }
set :length "len" "${sender}";
if string :value "gt" :comparator "i;ascii-numeric" "${len}" "5" { fileinto "Work"; }
set :quotewildcard "q" "a*b?c";
if string :is "${q}" "a\\*b\\?c" { if header :matches "subject" "*: *" { fileinto :create "Prefix/${1}"; } }
if string :count "ge" :comparator "i;ascii-numeric" ["${sender}", "", "x"] "2" { fileinto "Misc"; }
