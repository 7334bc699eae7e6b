require ["fileinto","imap4flags","copy","variables","date","relational","body","mailbox"];
# rule:[Newsletters]
if anyof (header :contains "list-id" "example", header :is "precedence" ["bulk","list"])
{
	addflag "\\Seen";
	fileinto :create "Lists";
	stop;
}
# rule:[Shop]
if allof (address :domain :contains "from" "example.net", body :text :contains "order")
{
	fileinto :copy :flags "$label1" "Shop";
}
# rule:[Old]
if date :value "lt" :originalzone "date" "date" "2024-03-06"
{
	setflag "$Old";
}
